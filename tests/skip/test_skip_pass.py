"""The skip pass: unified and similarity schedules remove whole residual blocks, exactly as eager would."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import lamina
from lamina.models.char_gpt import CharGPT
from lamina.passes.manager import run_pipeline
from lamina.passes.skip import SkipError


def _model(layers: int = 8) -> CharGPT:
    torch.manual_seed(0)
    return CharGPT(96, 64, 4, layers, max_len=32).eval()


def _without(model: CharGPT, removed: list[int]) -> CharGPT:
    """The eager model with blocks ``removed`` taken out: what skipping them means."""
    out = copy.deepcopy(model)
    out.h = nn.ModuleList(b for i, b in enumerate(out.h) if i not in removed)
    return out


X = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))


def test_speedup_one_is_the_identity() -> None:
    g = lamina.trace(_model(), (X,))
    plain = run_pipeline(g, "canonicalize")
    skipped = run_pipeline(g, "canonicalize,skip{speedup=1.0}")
    assert str(skipped) == str(plain)


@pytest.mark.parametrize("speedup, removed", [(1.25, [2, 5]), (1.5, [2, 4, 6]), (2.0, [1, 2, 4, 5, 6])])
def test_unified_removes_evenly_spaced_middle_blocks(speedup: float, removed: list[int]) -> None:
    model = _model()
    compiled = lamina.compile(model, (X,), pipeline=f"canonicalize,skip{{speedup={speedup}}},fuse", poison=True)
    note = next(h for h in compiled.graph.history if h.startswith("skip: removed"))
    assert note.startswith(f"skip: removed {len(removed)} of 8 layers ({', '.join(f'h.{i}' for i in removed)})")
    keys = {p.key for p in compiled.graph.params}
    assert not any(k.startswith(tuple(f"h.{i}." for i in removed)) for k in keys)
    assert "h.0.c_attn.weight" in keys and "h.7.c_out.weight" in keys
    plan = compiled._executor.plan_for([X], compiled._weights)
    held = {t.untyped_storage().data_ptr() for t in plan.run.__globals__.values() if isinstance(t, torch.Tensor)}
    gone = [w for k, w in compiled._weights.items() if k.startswith(tuple(f"h.{i}." for i in removed))]
    assert gone and not any(w.untyped_storage().data_ptr() in held for w in gone)  # the plan holds none of them
    assert compiled._weights["h.0.c_attn.weight"].untyped_storage().data_ptr() in held  # but the kept ones
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), _without(model, removed)(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("speedup, removed", [(1.25, [6, 7]), (2.0, [3, 4, 5, 6, 7])])
def test_exit_removes_the_last_blocks(speedup: float, removed: list[int]) -> None:
    model = _model()
    compiled = lamina.compile(model, (X,), pipeline=f"canonicalize,skip{{policy=exit,speedup={speedup}}},fuse",
                              poison=True)
    note = next(h for h in compiled.graph.history if h.startswith("skip: removed"))
    assert note.startswith(f"skip: removed {len(removed)} of 8 layers ({', '.join(f'h.{i}' for i in removed)})")
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), _without(model, removed)(X), rtol=1e-5, atol=1e-5)


def test_similarity_removes_the_blocks_that_change_the_stream_least(tmp_path) -> None:
    model = _model()
    with torch.no_grad():  # two blocks made nearly the identity: their residual updates shrunk
        for i in (3, 5):
            for layer in (model.h[i].c_proj, model.h[i].c_out):
                layer.weight.mul_(1e-3)
                layer.bias.zero_()
    stats = lamina.calibrate(model, [X], cache_dir=tmp_path, progress=False)
    compiled = lamina.compile(model, (X,), pipeline="canonicalize,skip{policy=similarity,drop=block:2},fuse",
                              calibration=stats, poison=True)
    assert any("(h.3, h.5)" in h for h in compiled.graph.history)
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), _without(model, [3, 5])(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pipeline, words", [
    ("skip{speedup=0.5}", "speedup=0.5 must be at least 1"),
    ("skip{speedup=50}", "speedup=50 needs more than the 6 removable layers of 8"),
    ("skip{policy=similarity,drop=block:2}", "needs calibration statistics"),
    ("skip{policy=similarity}", "needs drop=block:N"),
    ("skip{policy=similarity,drop=attn:2}", "needs calibration statistics"),
    ("skip{policy=similarity,drop=heads:2}", "must be block:N, attn:N or mlp:N"),
    ("skip{policy=random}", "policy='random' is not one of unified, exit, similarity"),
])
def test_bad_schedules_name_the_option(pipeline: str, words: str) -> None:
    with pytest.raises(SkipError, match=words):
        run_pipeline(lamina.trace(_model(), (X,)), f"canonicalize,{pipeline}")


def _silenced(model: CharGPT, blocks: list[int], sublayer: str) -> CharGPT:
    """The eager model with the attention (or MLP) sublayer of ``blocks`` adding nothing: what removing it means."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for i in blocks:
            layer = out.h[i].c_proj if sublayer == "attn" else out.h[i].c_out
            layer.weight.zero_()
            layer.bias.zero_()
    return out


@pytest.mark.parametrize("sublayer, shrunk", [("attn", [2, 6]), ("mlp", [1, 4])])
def test_similarity_drops_the_sublayers_that_change_the_stream_least(tmp_path, sublayer: str,
                                                                      shrunk: list[int]) -> None:
    model = _model()
    with torch.no_grad():  # two sublayers made nearly the identity
        for i in shrunk:
            layer = model.h[i].c_proj if sublayer == "attn" else model.h[i].c_out
            layer.weight.mul_(1e-3)
            layer.bias.zero_()
    stats = lamina.calibrate(model, [X], cache_dir=tmp_path, progress=False)
    assert all(b.attn_cosine is not None and b.mlp_cosine is not None for b in stats.blocks.values())
    compiled = lamina.compile(model, (X,), pipeline=f"canonicalize,skip{{policy=similarity,drop={sublayer}:2}},fuse",
                              calibration=stats, poison=True)
    assert any(f"removed 2 of 16 sublayers (h.{shrunk[0]} {sublayer}, h.{shrunk[1]} {sublayer})" in h
               for h in compiled.graph.history)
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), _silenced(model, shrunk, sublayer)(X), rtol=1e-5, atol=1e-5)


def test_a_dropped_attention_sublayer_keeps_its_cache_entries(tmp_path) -> None:
    from lamina.models.char_gpt import Decode, Prefill

    model = _model()
    stats = lamina.calibrate(model, [X], cache_dir=tmp_path, progress=False)
    token = X[:1, :1]
    with torch.no_grad():
        _, keys, values = Prefill(model)(X[:1])
        compiled = lamina.compile(Decode(model), (token, keys, values), calibration=stats, poison=True,
                                  pipeline="canonicalize,skip{policy=similarity,drop=attn:3},fuse")
        note = next(h for h in compiled.graph.history if h.startswith("skip: removed"))
        dropped = [int(i) for i in re.findall(r"h\.(\d+) attn", note)]
        assert len(dropped) == 3
        want = Decode(_silenced(model, dropped, "attn"))(token, keys, values)
        for got, expected in zip(compiled(token, keys, values), want):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_more_sublayers_than_there_are_is_an_error(tmp_path) -> None:
    model = _model(4)
    stats = lamina.calibrate(model, [X], cache_dir=tmp_path, progress=False)
    with pytest.raises(SkipError, match="more than the 4 mlp sublayers"):
        lamina.compile(model, (X,), pipeline="canonicalize,skip{policy=similarity,drop=mlp:5}", calibration=stats)


def test_removing_every_block_is_an_error(tmp_path) -> None:
    model = _model(4)
    stats = lamina.calibrate(model, [X], cache_dir=tmp_path, progress=False)
    with pytest.raises(SkipError, match="would remove every one of the 4 layers"):
        lamina.compile(model, (X,), pipeline="canonicalize,skip{policy=similarity,drop=block:4}", calibration=stats)


def test_no_layer_stack_is_a_clear_error() -> None:
    with pytest.raises(SkipError, match="no residual layer stack"):
        run_pipeline(lamina.trace(nn.Linear(4, 4), (torch.randn(2, 4),)), "skip{speedup=1.5}")


def test_decoding_with_a_cache_skips_blocks_and_keeps_their_cache_entries() -> None:
    from lamina.models.char_gpt import Decode, Prefill

    model = _model()
    with torch.no_grad():
        _, keys, values = Prefill(model)(X)
        token = X[:, -1:]
        compiled = lamina.compile(Decode(model), (token, keys, values), pipeline="canonicalize,skip{speedup=1.5},fuse",
                                  poison=True, fallback=False)
        note = next(h for h in compiled.graph.history if h.startswith("skip: removed"))
        assert "(model.h.2, model.h.4, model.h.6)" in note and "3 of them still compute their cache entries" in note
        logits, new_k, new_v = compiled(token, keys, values)
        eager = Decode(_without(model, [2, 4, 6]))
        kept = [0, 1, 3, 5, 7]
        want_logits, want_k, want_v = eager(token, keys[kept], values[kept])
        torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(new_k[kept], want_k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(new_v[kept], want_v, rtol=1e-5, atol=1e-5)
        # a skipped block's entries: its keys of the stream the blocks before it left
        stream = model.embed(token, keys.shape[3])
        for i in (0, 1):
            stream = model.h[i](stream, keys[i], values[i])[0]
        torch.testing.assert_close(new_k[2], model.h[2].qkv(stream)[1], rtol=1e-5, atol=1e-5)
    keys_read = {p.key for p in compiled.graph.params}
    assert "model.h.2.c_attn.weight" in keys_read and "model.h.2.c_fc.weight" not in keys_read  # what the cache needs


def test_skip_then_quantize_then_newton_compose() -> None:
    model = _model()
    pipeline = "canonicalize,skip{speedup=1.5},quantize{bits=8,keep=none},newton{iters=5,chunk=5},fuse"
    stacked = lamina.compile(model, (X,), pipeline=pipeline, poison=True, fallback=False)
    plain = lamina.compile(model, (X,), pipeline="canonicalize,skip{speedup=1.5},quantize{bits=8,keep=none},fuse")
    assert any(op.name == "layer_scan" for op in stacked.graph.walk())
    with torch.no_grad():
        torch.testing.assert_close(stacked(X), plain(X), rtol=1e-5, atol=1e-5)


def test_statistics_of_the_calibrated_model_serve_a_wrapper_around_it(tmp_path) -> None:
    from lamina.models.char_gpt import Decode, Prefill

    model = _model()
    with torch.no_grad():
        for layer in (model.h[4].c_proj, model.h[4].c_out):
            layer.weight.mul_(1e-3)
            layer.bias.zero_()
        _, keys, values = Prefill(model)(X)
    stats = lamina.calibrate(model, [X], cache_dir=tmp_path, progress=False)  # keys h.4...; the wrapper's model.h.4...
    compiled = lamina.compile(Decode(model), (X[:, -1:], keys, values), calibration=stats, fallback=False,
                              pipeline="canonicalize,skip{policy=similarity,drop=block:1},quantize{budget=6.0},fuse")
    assert any("(model.h.4)" in h for h in compiled.graph.history)
    assert any(r.score is not None for r in compiled.quantization)


def _static_decode_inputs(model: CharGPT, tokens: int) -> tuple:
    from lamina.models.char_gpt import Prefill, static_caches

    with torch.no_grad():
        _, keys, values = Prefill(model)(X[:1])
    return (X[:1, :tokens], torch.arange(16, 16 + tokens), *static_caches(keys, values, 24))


@pytest.mark.parametrize("tokens", [1, 3])
def test_cache_skip_leaves_removed_layers_caches_unwritten(tokens: int) -> None:
    """skip{...,cache=skip} on caches written in place: the kept layers' caches get their entries, the removed
    ones are left as they were (no copy, no clone: the plan hands the input back), and the logits are the eager
    model's without the removed blocks."""
    from lamina.models.char_gpt import StaticDecode

    model = _model()
    inputs = _static_decode_inputs(model, tokens)
    compiled = lamina.compile(StaticDecode(model), inputs, poison=True, fallback=False,
                              pipeline="canonicalize,skip{policy=exit,speedup=2,cache=skip},fuse")
    note = next(h for h in compiled.graph.history if h.startswith("skip: removed"))
    removed = [int(i) for i in re.findall(r"model\.h\.(\d+)", note)]
    assert removed and "leave their caches unwritten" in note
    kept = [i for i in range(8) if i not in removed]
    before = [c.clone() for c in inputs[2:]]
    with torch.no_grad():
        (logits,) = compiled(*inputs)
        eager_inputs = (*inputs[:2], *[c.clone() for i in kept for c in before[2 * i:2 * i + 2]])
        (want,) = StaticDecode(_without(model, removed))(*eager_inputs)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    for layer in range(8):
        for j in (0, 1):
            now, then = inputs[2 + 2 * layer + j], before[2 * layer + j]
            if layer in removed:
                assert torch.equal(now, then), f"layer {layer} wrote its cache"
            else:
                torch.testing.assert_close(now, eager_inputs[2 + 2 * kept.index(layer) + j], rtol=1e-5, atol=1e-6)
                assert not torch.equal(now, then)
    (plan,) = compiled._executor.plans.values()
    assert plan.source.count(".clone()") == 1  # the logits; each untouched cache is returned as it is


def test_cache_skip_needs_caches_written_in_place() -> None:
    from lamina.models.char_gpt import Decode, Prefill

    model = _model()
    with torch.no_grad():
        _, keys, values = Prefill(model)(X)
    with pytest.raises(SkipError, match="cache=skip needs caches written in place.*cache=keep"):
        lamina.compile(Decode(model), (X[:, -1:], keys, values), pipeline="canonicalize,skip{speedup=1.5,cache=skip}")


@pytest.mark.parametrize("pipeline, words", [
    ("canonicalize,skip{speedup=1.5,cache=drop}", "cache='drop' is not one of keep, skip"),
    ("canonicalize,skip{policy=temporal,period=2,cache=skip}", "cache=skip .* policy=temporal"),
])
def test_bad_cache_options_name_the_option(pipeline: str, words: str) -> None:
    with pytest.raises(SkipError, match=words):
        run_pipeline(lamina.trace(_model(), (X,)), pipeline)
