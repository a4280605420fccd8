"""Each op's NumPy reference against the torch function it stands for, on random inputs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lamina.ir import REGISTRY, DType, GraphBuilder, TensorType, interpret
from lamina.ir.interpreter import GROUP_OPS
from lamina.ir.dtypes import from_torch
from tests.conftest import rel_error


@dataclass
class Case:
    op: str
    inputs: list[torch.Tensor]
    torch_fn: Callable[..., Any]
    attrs: dict = field(default_factory=dict)
    tol: float = 1e-6


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def pos(*shape: int) -> torch.Tensor:
    return torch.rand(*shape) + 0.1


def ints(high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape)


def mask(*shape: int) -> torch.Tensor:
    return torch.rand(*shape) > 0.5


CASES = [
    Case("exp", [r(3, 4)], torch.exp), Case("log", [pos(3, 4)], torch.log), Case("sqrt", [pos(5)], torch.sqrt),
    Case("rsqrt", [pos(5)], torch.rsqrt), Case("tanh", [r(3, 4)], torch.tanh), Case("sin", [r(7)], torch.sin),
    Case("cos", [r(7)], torch.cos), Case("erf", [r(3, 4)], torch.erf), Case("sigmoid", [r(3, 4) * 10], torch.sigmoid),
    Case("silu", [r(3, 4)], F.silu), Case("gelu", [r(3, 4)], F.gelu), Case("hardswish", [r(3, 4) * 4], F.hardswish),
    Case("gelu", [r(3, 4)], lambda x: F.gelu(x, approximate="tanh"), {"approximate": "tanh"}),
    Case("reciprocal", [pos(4)], torch.reciprocal), Case("floor", [r(9) * 3], torch.floor),
    Case("ceil", [r(9) * 3], torch.ceil), Case("trunc", [r(9) * 3], torch.trunc),
    Case("log1p", [pos(9) * 1e-6], torch.log1p), Case("sign", [torch.tensor([-2.0, 0.0, 3.0, float("nan")])], torch.sign),
    Case("sign", [ints(5, 6) - 2], torch.sign),
    Case("floor_divide", [r(3, 4) * 5, r(4)], torch.floor_divide),
    Case("floor_divide", [ints(20, 3, 4) - 10, ints(5, 4) + 1], torch.floor_divide),
    Case("remainder", [r(3, 4) * 5, r(4)], torch.remainder),
    Case("remainder", [ints(20, 3, 4) - 10, -ints(5, 4) - 1], torch.remainder),
    Case("fmod", [r(3, 4) * 5, r(4)], torch.fmod), Case("fmod", [ints(20, 3, 4) - 10, ints(5, 4) + 1], torch.fmod),
    Case("relu", [r(3, 4)], F.relu), Case("copy", [r(2, 3)], torch.clone), Case("neg", [r(4)], torch.neg), Case("abs", [r(4)], torch.abs),
    Case("logical_not", [mask(4)], torch.logical_not),
    Case("cast", [r(6) * 5], lambda x: x.to(torch.int32), {"dtype": DType.i32}),
    Case("cast", [r(6)], lambda x: x.to(torch.bfloat16).float(), {"dtype": DType.bf16}),
    Case("clamp", [r(10)], lambda x: torch.clamp(x, -0.5, 0.25), {"min": -0.5, "max": 0.25}),
    Case("add", [r(2, 3, 4), r(4)], torch.add), Case("sub", [r(3, 1), r(1, 5)], torch.sub),
    Case("mul", [r(2, 3), r(2, 3)], torch.mul), Case("div", [r(2, 3), pos(3)], torch.div),
    Case("pow", [pos(2, 3), r(2, 3)], torch.pow), Case("maximum", [r(4), r(4)], torch.maximum),
    Case("minimum", [r(4), r(4)], torch.minimum),
    *[Case(name, [ints(3, 4, 4), ints(3, 4)], getattr(torch, name)) for name in ("eq", "ne", "lt", "le", "gt", "ge")],
    Case("logical_and", [mask(5), mask(5)], torch.logical_and), Case("logical_or", [mask(5), mask(5)], torch.logical_or),
    Case("logical_xor", [mask(5), mask(5)], torch.logical_xor),
    Case("where", [mask(3, 4), r(3, 4), r(4)], torch.where),
    Case("sum", [r(3, 4, 5)], lambda x: x.sum((0, 2)), {"dims": [0, -1]}),
    Case("sum", [ints(9, 3, 4)], lambda x: x.sum(), {"dims": []}),
    Case("mean", [r(3, 4, 5)], lambda x: x.mean(-1, keepdim=True), {"dims": [-1], "keepdim": True}),
    Case("amax", [r(3, 4)], lambda x: x.amax(1), {"dims": [1]}),
    Case("amin", [r(3, 4)], lambda x: x.amin(0), {"dims": [0]}),
    Case("var", [r(3, 8)], lambda x: x.var(-1, correction=0), {"dims": [-1], "correction": 0}),
    Case("argmax", [r(3, 8)], lambda x: x.argmax(-1), {"dim": -1}),
    Case("cumsum", [r(3, 8)], lambda x: x.cumsum(1), {"dim": 1}),
    Case("softmax", [r(3, 8) * 5], lambda x: x.softmax(-1), {"dim": -1}),
    Case("log_softmax", [r(3, 8) * 5], lambda x: x.log_softmax(0), {"dim": 0}),
    Case("matmul", [r(2, 3, 4, 5), r(3, 5, 6)], torch.matmul, tol=1e-5),
    Case("linear", [r(2, 3, 8), r(5, 8), r(5)], F.linear, tol=1e-5),
    Case("linear", [r(4, 8), r(5, 8)], F.linear, tol=1e-5),
    Case("layer_norm", [r(2, 3, 8), r(8), r(8)], lambda x, w, b: F.layer_norm(x, (8,), w, b), tol=1e-5),
    Case("layer_norm", [r(2, 3, 8)], lambda x: F.layer_norm(x, (3, 8)), {"normalized_ndim": 2}, tol=1e-5),
    Case("rms_norm", [r(2, 3, 8), r(8)], lambda x, w: F.rms_norm(x, (8,), w, 1e-6), tol=1e-5),
    Case("embedding", [r(10, 4), ints(10, 2, 3)], lambda w, i: F.embedding(i, w)),
    Case("attention", [r(2, 4, 6, 8), r(2, 4, 7, 8), r(2, 4, 7, 5)], F.scaled_dot_product_attention, tol=1e-5),
    Case("attention", [r(2, 4, 6, 8), r(2, 4, 6, 8), r(2, 4, 6, 8)],
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3),
         {"causal": True, "scale": 0.3}, tol=1e-5),
    Case("attention", [r(1, 4, 6, 8), r(1, 2, 6, 8), r(1, 2, 6, 8), mask(6, 6)],
         lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, m, enable_gqa=True), {"gqa": True}, tol=1e-5),
    Case("attention", [r(2, 2, 6, 8), r(2, 2, 6, 8), r(2, 2, 6, 8), r(2, 1, 6, 6)],
         F.scaled_dot_product_attention, tol=1e-5),
    Case("dropout", [r(5)], lambda x: F.dropout(x, 0.1, training=False), {"p": 0.1}),
    Case("identity", [r(5)], lambda x: x.clone()),
    Case("reshape", [r(2, 3, 4)], lambda x: x.reshape(6, -1), {"shape": [6, -1]}),
    Case("permute", [r(2, 3, 4)], lambda x: x.permute(2, 0, 1), {"dims": [2, 0, 1]}),
    Case("expand", [r(3, 1)], lambda x: x.expand(2, 3, 4), {"shape": [2, 3, 4]}),
    Case("slice", [r(4, 10)], lambda x: x[:, 1:9:3], {"dim": 1, "start": 1, "end": 9, "step": 3}),
    Case("concat", [r(2, 3), r(2, 5)], lambda a, b: torch.cat([a, b], 1), {"dim": 1}),
    Case("gather", [r(3, 5), ints(5, 3, 2)], lambda x, i: torch.gather(x, 1, i), {"dim": 1}),
    Case("index_select", [r(3, 5), ints(3, 4)], lambda x, i: torch.index_select(x, 0, i), {"dim": 0}),
    Case("index", [r(3, 5, 6), ints(3, 4, 1), ints(6, 1, 2)], lambda x, i, j: x[i, :, j], {"positions": [0, 2]}),
    Case("index", [r(3, 5, 6), ints(5, 4)], lambda x, i: x[:, i], {"positions": [1]}),
    Case("tril", [r(5, 5)], lambda x: torch.tril(x, 1), {"diagonal": 1}),
    Case("triu", [r(2, 5, 5)], torch.triu),
    Case("pad", [r(2, 3, 4)], lambda x: F.pad(x, (1, 2, -1, 0), value=0.5), {"low": [0, -1, 1], "high": [0, 0, 2],
                                                                            "value": 0.5}),
    Case("slice_scatter", [r(4, 10), r(4, 3)], lambda x, s: torch.slice_scatter(x, s, 1, 1, 9, 3),
         {"dim": 1, "start": 1, "end": 9, "step": 3}),
    Case("as_strided", [r(4, 6)], lambda x: torch.as_strided(x, (3, 3), (5, 2), 1),
         {"size": [3, 3], "stride": [5, 2], "offset": 1}),
    Case("histc", [r(50)], lambda x: torch.histc(x, 7, -1.0, 1.5), {"bins": 7, "min": -1.0, "max": 1.5}),
    Case("index_put", [r(5, 3), r(2, 3), torch.tensor([4, 1])], lambda x, v, i: torch.index_put(x, (i,), v),
         {"positions": [0]}),
    Case("index_put", [r(5, 3), r(4), torch.tensor([0, 0, 2, -1]), torch.tensor([1, 1, 0, 2])],
         lambda x, v, i, j: torch.index_put(x, (i, j), v, accumulate=True), {"positions": [0, 1], "accumulate": True}),
    Case("full", [], lambda: torch.full((2, 3), 1.5), {"shape": [2, 3], "value": 1.5, "dtype": DType.f32}),
    Case("arange", [], lambda: torch.arange(2, 11, 3), {"start": 2, "end": 11, "step": 3}),
    Case("constant", [], lambda: torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.0, -0.25]]),
         {"value": [0.5, -1.0, 2.0, 3.0, 0.0, -0.25], "shape": [2, 3], "dtype": DType.f32}),
    Case("conv2d", [r(2, 4, 9, 9), r(6, 2, 3, 3), r(6)],
         lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2),
         {"stride": [2], "padding": [1], "groups": 2}, tol=1e-5),
    Case("conv2d", [r(1, 3, 8, 8), r(4, 3, 3, 3)], lambda x, w: F.conv2d(x, w, dilation=2), {"dilation": [2]}, tol=1e-5),
    Case("conv2d", [r(2, 9, 9, 4), r(6, 2, 3, 3), r(6)],
         lambda x, w, b: F.conv2d(x.permute(0, 3, 1, 2), w, b, stride=2, padding=1, groups=2).permute(0, 2, 3, 1),
         {"stride": [2], "padding": [1], "groups": 2, "layout": "nhwc"}, tol=1e-5),
    Case("max_pool2d", [r(2, 3, 8, 8)], lambda x: F.max_pool2d(x, 3, 2, 1), {"kernel": [3], "stride": [2], "padding": [1]}),
    Case("avg_pool2d", [r(2, 3, 8, 8)], lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
         {"kernel": [3], "stride": [2], "padding": [1], "count_include_pad": False}),
    Case("avg_pool2d", [r(2, 3, 8, 8)], lambda x: F.avg_pool2d(x, 2), {"kernel": [2]}),
    Case("max_pool2d", [r(2, 3, 8, 7)], lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True),
         {"kernel": [3], "stride": [2], "ceil_mode": True}),
    Case("avg_pool2d", [r(2, 3, 8, 7)], lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
         {"kernel": [3], "stride": [2], "padding": [1], "ceil_mode": True}),
    Case("avg_pool2d", [r(2, 3, 8, 7)], lambda x: F.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=False),
         {"kernel": [2], "ceil_mode": True, "count_include_pad": False}),
    Case("stack", [r(3, 4), r(3, 4), r(3, 4)], lambda *xs: torch.stack(xs, 1), {"dim": 1}),
    # the Newton prefix sum: layers 0, 2 from deltas operand 0, layer 1 from operand 1
    Case("layer_scan", [r(3, 4), r(2, 3, 4), r(1, 3, 4)],
         lambda h, d0, d1: torch.stack([h, h + d0[0], h + d0[0] + d1[0], h + d0[0] + d1[0] + d0[1]]),
         {"pattern": [0, 1, 0]}),
    Case("batch_norm", [r(2, 3, 4, 4), r(3), pos(3), r(3), r(3)],
         lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, training=False, eps=1e-3), {"eps": 1e-3}, tol=1e-5),
    # quantized weights, unpacked here independently of lamina's format code
    Case("qlinear", [r(3, 64), torch.randint(-127, 128, (5, 64), dtype=torch.int8), pos(5, 2)],
         lambda x, q, s: F.linear(x, q.float() * s.repeat_interleave(32, 1)), {"bits": 8, "group": 32}, tol=1e-5),
    Case("qlinear", [r(3, 64), torch.randint(0, 256, (5, 32), dtype=torch.uint8), pos(5, 1), torch.full((5, 1), 7.0)],
         lambda x, q, s, z: F.linear(x, (_nibbles(q) - z) * s), {"bits": 4, "group": 0, "scheme": "asym"}, tol=1e-5),
]


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """4-bit values packed in 16-byte blocks (byte j: value j low, j + 16 high) as float, [N, 2 * bytes]."""
    out = torch.empty(q.shape[0], q.shape[1] * 2)
    for b in range(q.shape[1] // 16):
        block = q[:, 16 * b:16 * b + 16].int()
        out[:, 32 * b:32 * b + 16], out[:, 32 * b + 16:32 * b + 32] = block & 15, block >> 4
    return out


def _int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(1, keepdim=True) / 127
    return torch.round(w / scale).clamp(-128, 127).to(torch.int8), scale

MULTI_RESULT = {"split": (r(4, 10), lambda x: torch.split(x, [3, 7], 1), {"sizes": [3, 7], "dim": 1}),
                "topk": (r(4, 10), lambda x: torch.topk(x, 3, 1, largest=False), {"k": 3, "dim": 1, "largest": False}),
                "sort": (ints(4, 3, 10), lambda x: torch.sort(x, dim=1, descending=True, stable=True),
                         {"dim": 1, "descending": True}),
                "quantize": (r(6, 40), _int8_per_channel, {"bits": 8, "group": 0})}


def _run(op: str, inputs: list[torch.Tensor], attrs: dict) -> list[np.ndarray]:
    b = GraphBuilder()
    values = [b.input(TensorType(tuple(t.shape), from_torch(t.dtype)), f"x{i}") for i, t in enumerate(inputs)]
    result = b.emit_op(op, values, attrs)
    graph = b.build(result.results)
    return interpret(graph, [t.numpy() for t in inputs])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.op)
def test_reference_matches_torch(case: Case) -> None:
    (out,) = _run(case.op, case.inputs, case.attrs)
    expected = case.torch_fn(*case.inputs)
    assert out.dtype == (expected.float() if expected.dtype == torch.bfloat16 else expected).numpy().dtype
    assert out.shape == tuple(expected.shape)
    assert rel_error(out, expected.float() if expected.dtype == torch.bfloat16 else expected) <= case.tol


@pytest.mark.parametrize("op", list(MULTI_RESULT))
def test_multi_result_ops_match_torch(op: str) -> None:
    x, fn, attrs = MULTI_RESULT[op]
    for got, want in zip(_run(op, [x], attrs), fn(x), strict=True):
        assert rel_error(got, want) == 0


def test_every_op_has_a_case() -> None:
    covered = {c.op for c in CASES} | set(MULTI_RESULT) | {"fused", "yield", "newton", "iterate",
                                                                  "route"} | GROUP_OPS  # test_newton.py, test_route.py,
    #                                                                       tests/distributed/test_collectives.py
    assert set(REGISTRY) - covered == set()


@pytest.mark.parametrize("op", ["floor_divide", "remainder", "fmod"])
def test_integer_division_by_zero_is_an_error_as_in_torch(op: str) -> None:
    with pytest.raises(ZeroDivisionError):
        _run(op, [torch.tensor([3, 4]), torch.tensor([1, 0])], {})


@pytest.mark.parametrize(("op", "index", "fn"), [
    ("gather", torch.tensor([[0, -1]]), lambda x, i: torch.gather(x, 1, i)),
    ("index_select", torch.tensor([3]), lambda x, i: torch.index_select(x, 0, i)),
    ("index", torch.tensor([-4]), lambda x, i: x[i]),
])
def test_out_of_range_indices_are_errors_as_in_torch(op: str, index: torch.Tensor, fn) -> None:
    x = r(3, 5)
    with pytest.raises((IndexError, RuntimeError)):
        fn(x, index)
    attrs = {"dim": 1 if op == "gather" else 0} if op != "index" else {"positions": [0]}
    with pytest.raises(IndexError):
        _run(op, [x, index], attrs)


def test_every_op_is_documented() -> None:
    for name, opdef in REGISTRY.items():
        assert opdef.doc, name
