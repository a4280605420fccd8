"""Small reference models used by the demo, the tests and the benchmarks.

Each ``make_*`` returns ``(model, example_inputs)`` with seeded random weights.
"""
from .cnn import make_cnn
from .gpt2_stack import make_gpt2_stack
from .llama_block import make_llama_block
from .mlp import make_mlp

__all__ = ["make_cnn", "make_gpt2_stack", "make_llama_block", "make_mlp"]
