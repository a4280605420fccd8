"""Tiny HuggingFace models (random weights, no downloads) for ``lamina dump examples/hf_models.py:gpt2``."""
from lamina.models.hf import make_hf_gpt2, make_hf_llama


def gpt2():
    """GPT2LMHeadModel, 2 layers: (model, (input_ids,), {"use_cache": False})."""
    return make_hf_gpt2()


def llama():
    """LlamaForCausalLM, 2 layers, grouped-query attention."""
    return make_hf_llama()
