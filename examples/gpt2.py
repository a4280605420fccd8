"""A 4-layer GPT-2-style decoder for ``lamina dump examples/gpt2.py:make``."""
from lamina.models import make_gpt2_stack


def make():
    """(model, example_inputs): batch 2, 16 tokens, d_model 64, 4 heads."""
    return make_gpt2_stack(batch=2, seq=16, n_layers=4)
