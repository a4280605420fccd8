"""layers (analysis): residual chains and shared structures, on hand-written and HuggingFace stacks."""
from __future__ import annotations

import pytest

import lamina
from lamina.frontends.fx import import_module
from lamina.models import make_gpt2_stack, make_llama_block
from lamina.models.hf import make_hf_gpt2, make_hf_llama
from lamina.passes.layers import find_chains


def _graph(factory, **kw):
    model, args, *kwargs = factory(**kw)
    return lamina.run_pipeline(import_module(model, args, kwargs[0] if kwargs else None).graph, "canonicalize")


def test_gpt2_stack_sublayers_alternate_attention_and_mlp() -> None:
    (chain,) = find_chains(_graph(make_gpt2_stack, n_layers=4), "sublayer")
    assert chain.structures() == [0, 1] * 4
    assert [layer.module for layer in chain.layers] == [f"h.{i // 2}" for i in range(8)]
    attn, mlp = chain.layers[0], chain.layers[1]
    assert any(op.name == "attention" for op in attn.ops) and not any(op.name == "attention" for op in mlp.ops)
    assert [p.hint for p in attn.params][:2] == ["h.0.ln_1.weight", "h.0.ln_1.bias"]
    for a, b in zip(chain.layers, chain.layers[1:]):
        assert a.out is b.stream


def test_gpt2_stack_blocks_share_one_structure() -> None:
    (chain,) = find_chains(_graph(make_gpt2_stack, n_layers=4), "block")
    assert chain.structures() == [0, 0, 0, 0] and len(chain.layers[0].params) == 12
    assert [layer.module for layer in chain.layers] == ["h.0", "h.1", "h.2", "h.3"]


@pytest.mark.parametrize("factory,prefix", [(make_hf_gpt2, "transformer.h"), (make_hf_llama, "model.layers")])
def test_huggingface_decoders(factory, prefix: str) -> None:
    graph = _graph(factory)
    (blocks,) = find_chains(graph, "block")
    assert [layer.module for layer in blocks.layers] == [f"{prefix}.0", f"{prefix}.1"]
    assert blocks.structures() == [0, 0]
    (subs,) = find_chains(graph, "sublayer")
    assert subs.structures() == [0, 1, 0, 1]
    # the attention mask and rotary tables are context: computed once, read by every layer
    assert blocks.layers[0].context and blocks.layers[0].context == blocks.layers[1].context


def test_a_single_block_is_no_chain_and_granularity_is_checked() -> None:
    graph = _graph(make_llama_block)
    assert find_chains(graph, "block") == []
    assert len(find_chains(graph, "sublayer")[0].layers) == 2
    with pytest.raises(ValueError, match="granularity"):
        find_chains(graph, "layer")


def test_without_module_paths_blocks_follow_the_period_of_the_structures() -> None:
    """dynamo's graphs carry no module paths: [attention, MLP] repeating makes blocks of two sublayers."""
    from lamina.ir.core import UNKNOWN

    graph = _graph(make_gpt2_stack, n_layers=4)
    graph = graph.replace(ops=tuple(op.replace(loc=UNKNOWN) for op in graph.ops))
    (chain,) = find_chains(graph, "block")
    assert len(chain.layers) == 4 and chain.structures() == [0, 0, 0, 0]
    assert all(sum(op.name == "attention" for op in layer.ops) == 1 for layer in chain.layers)


def test_kv_cache_exports_and_per_layer_inputs() -> None:
    """A decode step: each block exports its new keys and values, reads its own past keys and values."""
    import torch

    from lamina.models.char_gpt import Decode, make_char_gpt

    model, (idx,) = make_char_gpt(n_layers=3, seq=8)
    past = torch.randn(3, 1, 4, 8, 16)
    graph = lamina.run_pipeline(lamina.trace(Decode(model), (idx[:, :1], past, past.clone())), "canonicalize")
    (chain,) = find_chains(graph, "block")
    assert [len(layer.exports) for layer in chain.layers] == [2, 2, 2]
    assert all(len(layer.params) == 14 for layer in chain.layers)  # 12 weights, its past keys and values
    assert chain.structures() == [0, 0, 0]
