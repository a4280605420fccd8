"""parse(print(g)) prints identically, for model graphs and for random graphs (hypothesis)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lamina
from lamina.ir import DType, GraphBuilder, Loc, RegionBuilder, TensorType, interpret, parse, print_graph, symbol
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp

SYMBOLS = [symbol("B"), symbol("T")]
UNARY = ["exp", "tanh", "sigmoid", "silu", "neg", "abs", "relu", "sin", "cos", "erf", "floor"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]
COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]
PATHS = ["", "h.0.attn", "h.1.mlp.c_fc", "encoder.layer.3"]


@st.composite
def graphs(draw: st.DrawFn) -> lamina.Graph:
    """Random well-typed graphs: elementwise chains, reductions, layout ops, fused regions, odd attributes."""
    b = GraphBuilder(draw(st.sampled_from(["forward", "main", "g_1"])))
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.sampled_from([SYMBOLS[i % 2], 2, 3, 4])) for i in range(rank))
    values = [b.input(TensorType(shape, DType.f32), draw(st.sampled_from(["x", "input_ids", "0", "a.b", None])))]
    if draw(st.booleans()):
        values.append(b.param(draw(st.sampled_from(["w", "h.0.weight", "0.bias", "odd key!"])),
                              TensorType(shape[-1:], DType.f32)))
    for _ in range(draw(st.integers(1, 12))):
        x = draw(st.sampled_from(values))
        loc = Loc(draw(st.sampled_from(PATHS)), draw(st.sampled_from(["", "aten.add.Tensor"])))
        kind = draw(st.sampled_from(["unary", "binary", "compare", "reduce", "scalar", "fused", "layout", "split"]))
        if kind == "unary":
            values.append(b.emit(draw(st.sampled_from(UNARY)), x, loc=loc))
        elif kind == "binary":
            y = draw(st.sampled_from([v for v in values if v.type.shape == x.type.shape or v.type.rank == 0]))
            values.append(b.emit(draw(st.sampled_from(BINARY)), x, y, loc=loc))
        elif kind == "compare":
            c = b.emit(draw(st.sampled_from(COMPARE)), x, x, loc=loc)
            values.append(b.emit("where", c, x, b.emit("full", shape=[], value=0.0, dtype=DType.f32)))
        elif kind == "reduce" and x.type.rank:
            values.append(b.emit(draw(st.sampled_from(["sum", "amax", "mean"])), x, dims=[-1],
                                 keepdim=draw(st.booleans()), loc=loc))
        elif kind == "scalar":
            value = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                                   st.sampled_from([0.0, -0.0, 1e-05, 1e30, 2.0])))
            values.append(b.emit("full", shape=[], value=value, dtype=DType.f32, loc=loc))
        elif kind == "fused":
            region = RegionBuilder([x.type])
            inner = region.args[0]
            for _ in range(draw(st.integers(1, 3))):
                inner = region.emit(draw(st.sampled_from(UNARY)), inner)
            values.append(b.emit_op("fused", [x], {}, loc, [region.finish([inner])]).result)
        elif kind == "layout" and x.type.rank >= 2:
            values.append(b.emit("permute", x, dims=list(range(x.type.rank))[::-1], loc=loc))
        elif kind == "split" and x.type.rank and x.type.shape[-1] == 4:
            values.extend(b.emit_op("split", [x], {"sizes": [1, 3], "dim": -1 % x.type.rank}, loc).results)
    outputs = draw(st.lists(st.sampled_from(values[1:] or values), min_size=1, max_size=3, unique_by=id))
    return b.build(outputs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_graph_round_trips(graph: lamina.Graph) -> None:
    text = print_graph(graph)
    again = parse(text)
    assert print_graph(again) == text


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_parsed_graph_computes_the_same(graph: lamina.Graph) -> None:
    again = parse(print_graph(graph))
    def sample(shape: tuple) -> np.ndarray:
        return np.random.rand(*[2 if not isinstance(d, int) else d for d in shape]).astype(np.float32)

    inputs = [sample(v.type.shape) for v in graph.inputs]
    params = {p.key: sample(p.value.type.shape) for p in graph.params}
    for a, b in zip(interpret(graph, inputs, params), interpret(again, inputs, params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("factory", [make_mlp, make_gpt2_stack, make_llama_block, make_cnn])
def test_model_graph_round_trips(factory) -> None:
    model, args = factory()
    graph = lamina.trace(model, args)
    text = str(graph)
    assert str(parse(text)) == text


def test_history_comments_are_ignored_by_the_parser() -> None:
    model, args = make_mlp()
    graph = lamina.run_pipeline(lamina.trace(model, args), "canonicalize")
    assert graph.history and graph.history[0].startswith("canonicalize")
    with_history = print_graph(graph, history=True)
    assert with_history.startswith("// canonicalize")
    assert print_graph(parse(with_history)) == print_graph(graph)


def test_hand_written_text_with_symbols_and_regions() -> None:
    text = """
    // a comment
    graph @f(%x: f32[B, T*2], %n: i64[]) params(%w: f32[2*T, 8] "enc.w") {
      %0 = matmul(%x, %w) : f32[B, 8]   # enc (aten.mm.default)
      %r = fused(%0) {
        ^(%a: f32[B,8]):
          %b = tanh(%a) : f32[B,8]
          yield %b
      } : f32[B,8]
      %s = reshape(%r) {shape=[B*8]} : f32[8*B]
      return %s
    }
    """
    graph = parse(text)
    assert graph.params[0].key == "enc.w"
    assert graph.ops[0].loc == Loc("enc", "aten.mm.default")
    x = np.random.rand(3, 4).astype(np.float32)
    w = np.random.rand(4, 8).astype(np.float32)
    (out,) = interpret(graph, [x, np.array(0)], {"enc.w": w})
    np.testing.assert_allclose(out, np.tanh(x @ w).reshape(-1), rtol=1e-6)
    assert str(parse(str(graph))) == str(graph)


def test_a_large_graph_round_trips_and_canonicalizes() -> None:
    b = GraphBuilder()
    x = b.input(TensorType((4,), DType.f32), "x")
    v = x
    for i in range(3000):
        v = b.emit("tanh" if i % 2 else "neg", v)
    graph = b.build([v])
    text = print_graph(graph)
    assert print_graph(parse(text)) == text
    from lamina.passes.fusion import MAX_OPS

    kernels = lamina.run_pipeline(parse(text), "canonicalize,fuse").ops
    assert len(kernels) == -(-3000 // MAX_OPS)  # the cost model caps a kernel's size
