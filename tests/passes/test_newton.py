"""newton (SNLP Identity Newton): K = C reproduces the sequential stack; the op prints, parses, verifies."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from lamina.frontends.fx import import_module
from lamina.ir import interpret, parse, print_graph, verify
from lamina.ir.errors import LaminaError
from lamina.models import make_gpt2_stack
from lamina.models.hf import make_hf_llama
from lamina.runtime.program import BackendError

FACTORIES = {"gpt2": lambda: make_gpt2_stack(n_layers=4), "hf-llama": lambda: make_hf_llama(layers=3)}


def _imported(name: str):
    model, args, *kwargs = FACTORIES[name]()
    imported = import_module(model, args, kwargs[0] if kwargs else None)
    graph = lamina.run_pipeline(imported.graph, "canonicalize")
    weights = {k: v.numpy() for k, v in imported.weights.items()}
    return model, args, (kwargs[0] if kwargs else {}), graph, weights


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_iters_equal_to_chunk_reproduce_the_sequential_stack(name: str, granularity: str) -> None:
    _, args, _, graph, weights = _imported(name)
    inputs = [a.numpy() for a in args]
    want = interpret(graph, inputs, weights)[0]
    (chain,) = lamina.passes.layers.find_chains(graph, granularity)
    layers = len(chain.layers)
    for chunk in (layers, 2):
        newton = lamina.run_pipeline(graph, f"newton{{iters={min(chunk, layers)},chunk={chunk},granularity={granularity}}}")
        assert sum(op.name == "newton" for op in newton.ops) == 1
        got = interpret(newton, inputs, weights)[0]
        # sublayers yield their delta as computed: exact; blocks yield block(h) - h: float32 rounding
        assert _rel(got, want) <= (0 if granularity == "sublayer" else 1e-5)
        expanded = lamina.run_pipeline(newton, "newton-expand")
        names = [op.name for op in expanded.ops]
        assert "newton" not in names and "layer_scan" in names and "stack" in names
        # batched matmuls over stacked weights round differently from per-layer linears
        assert _rel(interpret(expanded, inputs, weights)[0], want) <= 1e-5


def test_fewer_iterations_are_an_approximation_that_the_expansion_matches() -> None:
    _, args, _, graph, weights = _imported("gpt2")
    inputs = [a.numpy() for a in args]
    want = interpret(graph, inputs, weights)[0]
    for iters in (1, 2, 3):
        newton = lamina.run_pipeline(graph, f"newton{{iters={iters}}}")
        got = interpret(newton, inputs, weights)[0]
        assert _rel(got, want) > 1e-3  # a random model is far from converged before K = L
        expanded = interpret(lamina.run_pipeline(newton, "newton-expand"), inputs, weights)[0]
        assert _rel(expanded, got) <= 1e-5


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_cpu_backend_runs_the_expanded_newton_stack(name: str, granularity: str) -> None:
    model, args, kwargs, _, _ = _imported(name)
    pipeline = f"canonicalize,newton{{iters=2,chunk=2,granularity={granularity}}},newton-expand,fuse"
    compiled = lamina.compile(model, args, example_kwargs=kwargs or None, pipeline=pipeline, poison=True)
    with torch.no_grad():
        want = model(*args, **kwargs)
    want = want.logits if hasattr(want, "logits") else want
    got = compiled(*args, **kwargs)
    got = got.logits if hasattr(got, "logits") else got
    assert _rel(got.numpy(), want.numpy()) <= 1e-5


def test_newton_op_prints_parses_and_verifies() -> None:
    _, _, _, graph, _ = _imported("gpt2")
    newton = lamina.run_pipeline(graph, "newton{iters=2,chunk=2}")
    text = print_graph(newton)
    assert "newton(" in text and "pattern=[0, 0, 0, 0]" in text and "iters=2, chunk=2" in text
    # one operand per weight of the block, stacked over the 4 layers
    assert "stack(%h.0.ln_1.weight, %h.1.ln_1.weight, %h.2.ln_1.weight, %h.3.ln_1.weight) {dim=0} : f32[4,64]" in text
    assert print_graph(verify(parse(text))) == text


def test_malformed_newton_is_rejected_with_a_reason() -> None:
    _, _, _, graph, _ = _imported("gpt2")
    text = print_graph(lamina.run_pipeline(graph, "newton{iters=2}"))
    with pytest.raises(LaminaError, match="pattern"):
        verify(parse(text.replace("pattern=[0, 0, 0, 0]", "pattern=[0, 1, 0, 0]")))
    with pytest.raises(LaminaError, match=r"region 0 has 3 layers in pattern \[0, 0, 0\], but a stacked operand is f32\[4,64\]"):
        verify(parse(text.replace("pattern=[0, 0, 0, 0]", "pattern=[0, 0, 0]")))
    with pytest.raises(LaminaError, match="take 13 operands, it has 12"):
        verify(parse(text.replace("%16 = newton(%3, %4,", "%16 = newton(%3,")))


def test_backends_append_the_lowering_steps_they_need() -> None:
    """A pipeline naming only optimisation passes runs: the cpu backend adds newton-expand right after newton
    and wrap at the end, and the timings (and dumps) show them; it computes what the reference backend does."""
    model, args = make_gpt2_stack(n_layers=2)
    compiled = lamina.compile(model, args, pipeline="canonicalize,newton{iters=2},fuse")
    assert [t.name for t in compiled.timings] == ["canonicalize", "newton{iters=2}", "newton-expand", "fuse", "wrap"]
    reference = lamina.compile(model, args, pipeline="canonicalize,newton{iters=2},fuse", backend="reference")
    assert [t.name for t in reference.timings] == ["canonicalize", "newton{iters=2}", "fuse"]
    torch.testing.assert_close(compiled(*args), reference(*args), rtol=1e-5, atol=1e-5)


def test_executors_refuse_unlowered_graphs() -> None:
    from lamina.runtime.cpu import CpuExecutor

    model, args = make_gpt2_stack(n_layers=2)
    with pytest.raises(BackendError, match="newton-expand"):
        CpuExecutor(lamina.run_pipeline(lamina.trace(model, args), "canonicalize,newton{iters=2}"))
    with pytest.raises(BackendError, match="wrap pass"):
        CpuExecutor(lamina.run_pipeline(lamina.trace(model, args), "canonicalize"))


def test_bad_options_are_named() -> None:
    _, _, _, graph, _ = _imported("gpt2")
    with pytest.raises(Exception, match="granularity"):
        lamina.run_pipeline(graph, "newton{granularity=layer}")


def _char_gpt_modules(layers: int = 6):
    from lamina.models.char_gpt import Decode, Prefill, make_char_gpt

    model, (idx,) = make_char_gpt(n_layers=layers, seq=12)
    return Prefill(model).eval(), Decode(model).eval(), idx


@pytest.mark.parametrize("granularity", ["block", "sublayer"])
def test_kv_caches_come_from_the_final_iterate(granularity: str) -> None:
    """Prefill and decode graphs export each layer's keys and values from the newton op; with K = C
    they equal the sequential caches, with K < C they are those of the last iterate (not sequential)."""
    prefill, decode, idx = _char_gpt_modules()
    with torch.no_grad():
        logits, keys, values = prefill(idx)
        token = logits[:, -1:].argmax(-1)
    for module, args in ((prefill, (idx,)), (decode, (token, keys, values))):
        graph = lamina.run_pipeline(lamina.trace(module, args), "canonicalize")
        (chain,) = lamina.passes.layers.find_chains(graph, granularity)
        assert sum(len(layer.exports) for layer in chain.layers) == 12  # a key and a value per block
        if len(args) == 3 and granularity == "block":  # each layer's past keys: one slice of the cache, no copy
            rewritten = lamina.run_pipeline(graph, "newton")
            producer = {id(r): o for o in rewritten.ops for r in o.results}
            (op,) = [o for o in rewritten.ops if o.name == "newton"]
            stacked = [producer[id(o)] for o in op.operands[1:] if o.type.rank == 5]
            assert [(o.name, o.operands[0].hint) for o in stacked] == [("slice", "past_k"), ("slice", "past_v")]
        with torch.no_grad():
            want = module(*args)
        chunk = 3 if granularity == "block" else 4
        exact = f"canonicalize,newton{{iters={chunk},chunk={chunk},granularity={granularity}}},newton-expand,fuse"
        got = lamina.compile(module, args, pipeline=exact, poison=True)(*args)
        for g, w in zip(got, want):
            assert _rel(g.numpy(), w.numpy()) <= 1e-5
        rough = lamina.compile(module, args, pipeline=exact.replace(f"iters={chunk}", "iters=1"), poison=True)(*args)
        assert _rel(rough[1].numpy(), want[1].numpy()) > 1e-4  # keys of later layers from an unconverged iterate


def test_greedy_generation_with_iters_equal_to_chunk_is_token_identical() -> None:
    from lamina.models.char_gpt import greedy

    prefill, decode, idx = _char_gpt_modules()
    with torch.no_grad():
        want = greedy(prefill, decode, idx, steps=8)
    pipeline = "canonicalize,newton{iters=2,chunk=2},newton-expand,fuse"
    fast_prefill = lamina.compile(prefill, (idx,), pipeline=pipeline)
    with torch.no_grad():
        _, keys, values = prefill(idx)
    token = want[:, :1]
    from torch.export import Dim
    past = Dim("past", min=1, max=64)
    fast_decode = lamina.compile(decode, (token, keys, values), pipeline=pipeline,
                                 dynamic_shapes=({}, {3: past}, {3: past}))
    got = greedy(fast_prefill, fast_decode, idx, steps=8)  # the cache grows: one plan per length
    assert torch.equal(got, want)
    assert not any(op.name == "layer_scan" for op in fast_decode.graph.ops)  # each one fused into its kernel
    assert any("layer_scan" in str(op.regions[0].ops) for op in fast_decode.graph.ops if op.name == "fused")


def test_early_stop_by_tolerance_is_a_loop_in_the_ir_with_reported_iterations() -> None:
    """newton{tol=...}: each chunk an ``iterate`` op (a while loop) after newton-expand; the interpreter
    and the cpu backend stop after the same number of iterations; a loose tolerance stops earlier."""
    from lamina.ir.interpreter import Interpreter

    _, args, _, graph, weights = _imported("gpt2")
    model, _ = make_gpt2_stack(n_layers=4)
    inputs = [a.numpy() for a in args]
    want = interpret(graph, inputs, weights)[0]
    counts = {}
    for tol in (0.7, 1e-6):  # this random stack's updates shrink slowly: 0.96, 0.90, 0.64, 0.24
        newton = lamina.run_pipeline(graph, f"newton{{iters=4,chunk=4,tol={tol}}}")
        reference = Interpreter({})
        env = {id(v): a for v, a in zip(newton.inputs, inputs)} | {id(p.value): weights[p.key] for p in newton.params}
        reference.run_ops(newton.ops, env)
        expanded = lamina.run_pipeline(newton, "newton-expand")
        text = print_graph(expanded)
        assert text.count("iterate(") == 1 and "max_iters=4" in text
        assert print_graph(verify(parse(text))) == text
        compiled = lamina.compile(model, args, pipeline=f"canonicalize,newton{{iters=4,chunk=4,tol={tol}}},newton-expand,fuse",
                                  poison=True)
        got = compiled(*args).numpy()
        assert compiled.newton_iterations == reference.iterations
        (residual,) = compiled.newton_residuals  # the last update's relative norm: 0.64 stops under 0.7
        assert (0.5 < residual < 0.7) if tol == 0.7 else (0.1 < residual < 0.4)
        counts[tol] = reference.iterations
        if tol < 1e-3:
            assert _rel(got, want) <= 1e-5
    assert counts == {0.7: [3], 1e-6: [4]}


def test_a_malformed_iterate_is_rejected() -> None:
    text = """graph @g(%x: f32[4]) {
  %0, %1 = iterate(%x) {carried=1, max_iters=3, tol=0.1} {
  ^(%2: f32[4]):
    %3 = exp(%2) : f32[4]
    yield %3
  } : f32[4], i64[]
  return %0
}"""
    with pytest.raises(LaminaError, match="float scalar"):
        verify(parse(text))
