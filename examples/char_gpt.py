"""The SNLP experiments' character GPT, one decode step with a KV cache, for ``lamina dump``:

    lamina dump examples/char_gpt.py:decode --pipeline 'canonicalize,newton{iters=2,chunk=3}' --after newton
    lamina dump examples/char_gpt.py:decode --pipeline 'canonicalize,newton{iters=2,chunk=3,tol=1e-3},newton-expand' \
        --after newton-expand
"""
import torch

from lamina.models.char_gpt import Decode, Prefill, make_char_gpt


def decode():
    """(model, example_inputs): 6 layers, d_model 64, a cache of 16 tokens, one new token."""
    model, (idx,) = make_char_gpt(n_layers=6, seq=16)
    with torch.no_grad():
        _, keys, values = Prefill(model)(idx)
    return Decode(model).eval(), (idx[:, -1:], keys, values)
