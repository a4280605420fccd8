"""Attention masks computed from constants: causal ones become ``causal=true``, full ones vanish, others stay."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from lamina.ir import interpret, parse
from lamina.models.hf import HF_ARCHITECTURES, tiny_hf_model
from lamina.passes.canonicalize import canonicalize

HEAD = """graph @g(%q: f32[1,2,{t},4], %k: f32[1,2,{s},4], %v: f32[1,2,{s},4]{extra}) {{
  %rows = arange() {{start={offset}, end={end}, step=1, dtype=i64}} : i64[{t}]
  %keys = arange() {{start=0, end={s}, step=1, dtype=i64}} : i64[{s}]
  %r = reshape(%rows) {{shape=[{t}, 1]}} : i64[{t},1]
  %c = reshape(%keys) {{shape=[1, {s}]}} : i64[1,{s}]
  %zero = full() {{shape=[], value=0.0, dtype=f32}} : f32[]
  %ninf = full() {{shape=[], value=-inf, dtype=f32}} : f32[]
  %low = full() {{shape=[], value=-3.4028234663852886e+38, dtype=f32}} : f32[]
"""
TAIL = """  %out = attention(%q, %k, %v, %mask) {{causal={causal}, scale=0.5, gqa=false}} : f32[1,2,{t},4]
  return %out
}}
"""
MASKS = {  # how %mask is made from the positions above; whether the attention keeps a mask after canonicalize
    "causal": ("%mask = le(%c, %r) : bool[{t},{s}]", False),
    "causal, additive": ("%m = le(%c, %r) : bool[{t},{s}]\n  %mask = where(%m, %zero, %ninf) : f32[{t},{s}]", False),
    "full": ("%mask = full() {{shape=[1, 1, {t}, {s}], value=true, dtype=bool}} : bool[1,1,{t},{s}]", False),
    "strictly below": ("%mask = lt(%c, %r) : bool[{t},{s}]", True),
    "above": ("%mask = ge(%c, %r) : bool[{t},{s}]", True),
    "finfo.min": ("%m = le(%c, %r) : bool[{t},{s}]\n  %mask = where(%m, %zero, %low) : f32[{t},{s}]", True),
    "from an input": ("%m = le(%c, %r) : bool[{t},{s}]\n  %mask = logical_and(%m, %pad) : bool[{t},{s}]", True),
}


def _graph(mask: str, t: int = 6, s: int = 6, offset: int = 0, causal: bool = False) -> str:
    extra = f", %pad: bool[{t},{s}]" if "%pad" in MASKS[mask][0] else ""
    fields = dict(t=t, s=s, offset=offset, end=offset + t, causal=str(causal).lower(), extra=extra)
    return HEAD.format(**fields) + "  " + MASKS[mask][0].format(**fields) + "\n" + TAIL.format(**fields)


def _inputs(text: str, t: int, s: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(1, 2, t, 4), (1, 2, s, 4), (1, 2, s, 4)]
    arrays = [rng.standard_normal(x).astype(np.float32) for x in shapes]
    if "%pad" in text:
        arrays.append(rng.random((t, s)) < 0.8)
    return arrays


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("causal", [False, True])
def test_fixed_masks_are_dropped_only_where_the_attention_is_the_same(mask: str, causal: bool) -> None:
    text = _graph(mask, causal=causal)
    graph = parse(text)
    after = canonicalize(graph)
    attention = next(op for op in after.ops if op.name == "attention")
    keeps_mask = MASKS[mask][1]
    assert (len(attention.operands) == 4) == keeps_mask, mask
    if not keeps_mask:
        assert attention.attrs["causal"] == (causal or mask != "full")
        assert not any(op.name in ("arange", "le", "where") for op in after.ops)  # the mask's ops are dead
    inputs = _inputs(text, 6, 6)
    np.testing.assert_array_equal(interpret(graph, inputs)[0], interpret(after, inputs)[0])


@pytest.mark.parametrize("t, s, offset, dropped", [
    (4, 8, 0, True),    # torch's is_causal with fewer queries than keys: aligned to the top left
    (4, 8, 4, False),   # the last 4 positions of 8 (a prompt after a cache): aligned to the bottom right
    (8, 4, 0, True),
])
def test_only_the_top_left_causal_pattern_becomes_causal(t: int, s: int, offset: int, dropped: bool) -> None:
    graph = parse(_graph("causal", t=t, s=s, offset=offset))
    after = canonicalize(graph)
    attention = next(op for op in after.ops if op.name == "attention")
    assert (len(attention.operands) == 3) == dropped
    inputs = _inputs(_graph("causal", t=t, s=s, offset=offset), t, s)
    np.testing.assert_array_equal(interpret(graph, inputs)[0], interpret(after, inputs)[0])


@pytest.mark.parametrize("arch", HF_ARCHITECTURES)
def test_transformers_masks_become_flags_and_the_models_still_agree(arch: str) -> None:
    """transformers builds each model's mask in the graph from positions: compiled, none is left."""
    model = tiny_hf_model(arch)
    ids = torch.randint(1, 128, (2, 12))
    kwargs = {} if arch == "bert" else {"use_cache": False}
    compiled = lamina.compile(model, (ids,), example_kwargs=kwargs, poison=True)
    attention = [op for op in compiled.graph.walk() if op.name == "attention"]
    assert attention and all(len(op.operands) == 3 for op in attention)
    assert all(op.attrs["causal"] == (arch != "bert") for op in attention)
    with torch.no_grad():
        want, got = model(ids, **kwargs), compiled(ids, **kwargs)
    key = "last_hidden_state" if arch == "bert" else "logits"
    torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_a_padding_mask_the_caller_passes_stays_and_the_models_still_agree(arch: str) -> None:
    """A mask built from the caller's ``attention_mask`` depends on the call: it is kept, and padded rows agree."""
    model = tiny_hf_model(arch)
    ids = torch.randint(1, 128, (3, 10))
    padding = torch.ones(3, 10, dtype=torch.long)
    padding[1, :4] = 0  # left padding
    padding[2, 7:] = 0  # right padding
    kwargs = {"attention_mask": padding} | ({} if arch == "bert" else {"use_cache": False})
    compiled = lamina.compile(model, (ids,), example_kwargs=kwargs, poison=True)
    attention = [op for op in compiled.graph.walk() if op.name == "attention"]
    assert attention and all(len(op.operands) == 4 for op in attention)
    with torch.no_grad():
        want, got = model(ids, **kwargs), compiled(ids, **kwargs)
    key = "last_hidden_state" if arch == "bert" else "logits"
    kept = padding.bool()  # rows of padding tokens may differ (eager's are arbitrary too)
    torch.testing.assert_close(got[key][kept], want[key][kept], rtol=1e-5, atol=1e-5)
