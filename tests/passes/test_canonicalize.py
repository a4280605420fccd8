"""canonicalize on real models (its golden IR cases: golden/canonicalize.lamina, run by test_golden.py)."""
from __future__ import annotations

import numpy as np
import pytest

import lamina
from lamina.frontends.fx import import_module
from lamina.ir import interpret, parse, print_graph
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp
from lamina.models.hf import make_hf_gpt2, make_hf_llama
from lamina.passes.canonicalize import canonicalize

def test_canonicalize_is_idempotent_and_pure() -> None:
    model, args, kwargs = make_hf_gpt2()
    graph = lamina.trace(model, args, kwargs)
    before = print_graph(graph)
    once = canonicalize(graph)
    assert print_graph(graph) == before  # the input graph is untouched
    assert print_graph(canonicalize(once)) == print_graph(once)
    assert len(once.ops) < len(graph.ops)


@pytest.mark.parametrize("factory", [make_mlp, make_gpt2_stack, make_llama_block, make_cnn, make_hf_gpt2, make_hf_llama])
def test_canonicalize_preserves_model_outputs(factory) -> None:
    model, args, *kwargs = factory()
    imported = import_module(model, args, kwargs[0] if kwargs else None)
    weights = {k: v.numpy() for k, v in imported.weights.items()}
    inputs = [a.numpy() for a in args]
    after = canonicalize(imported.graph)
    for a, b in zip(interpret(imported.graph, inputs, weights), interpret(after, inputs, weights)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_folding_keeps_nan_and_inf() -> None:
    graph = parse("""graph @g(%x: f32[2]) {
      %0 = full() {shape=[], value=0.0, dtype=f32} : f32[]
      %1 = div(%0, %0) : f32[]
      %2 = log(%0) : f32[]
      %3 = add(%x, %1) : f32[2]
      %4 = add(%3, %2) : f32[2]
      return %4
    }""")
    text = print_graph(canonicalize(graph))
    assert "value=nan" in text and "value=-inf" in text
    out = interpret(canonicalize(graph), [np.ones(2, np.float32)])[0]
    assert np.isnan(out).all()
