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
def test_cpu_backend_runs_the_expanded_newton_stack(name: str) -> None:
    model, args, kwargs, _, _ = _imported(name)
    pipeline = "canonicalize,newton{iters=2,chunk=2,granularity=sublayer},newton-expand,fuse"
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
    assert print_graph(verify(parse(text))) == text


def test_malformed_newton_is_rejected_with_a_reason() -> None:
    _, _, _, graph, _ = _imported("gpt2")
    text = print_graph(lamina.run_pipeline(graph, "newton{iters=2}"))
    with pytest.raises(LaminaError, match="pattern"):
        verify(parse(text.replace("pattern=[0, 0, 0, 0]", "pattern=[0, 1, 0, 0]")))
    with pytest.raises(LaminaError, match="take 37 operands, it has 49"):
        verify(parse(text.replace("pattern=[0, 0, 0, 0]", "pattern=[0, 0, 0]")))


def test_backends_ask_for_the_lowering() -> None:
    model, args = make_gpt2_stack(n_layers=2)
    with pytest.raises(BackendError, match="newton-expand"):
        lamina.compile(model, args, pipeline="canonicalize,newton{iters=2}")


def test_bad_options_are_named() -> None:
    _, _, _, graph, _ = _imported("gpt2")
    with pytest.raises(Exception, match="granularity"):
        lamina.run_pipeline(graph, "newton{granularity=layer}")
