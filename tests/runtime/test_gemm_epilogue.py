"""A linear's bias, residual add and ReLU/clamp on the C GEMM's accumulators (``runtime/gemm_epilogue.py``):
which kernels after a linear qualify, and models whose pairs run as one call against eager. The backend
uses the C GEMM on AMD CPUs with AVX-512; these tests force it on wherever the CPU has AVX-512.
Tolerance: float32, 1e-5 relative to the output's scale."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.gemm_c import EPILOGUE_NAME
from lamina.runtime.gemm_epilogue import Epilogue, pairs
from tests.conftest import rel_error
from tests.runtime.conftest import C_GEMM, trained_norms

pytestmark = C_GEMM
TOL = 1e-5



class _Epilogue(nn.Module):
    """A linear over rows and what follows it (``kind``), reading a residual ``r`` of the output's shape."""

    def __init__(self, kind: str, k: int = 40, n: int = 70) -> None:
        super().__init__()
        self.kind = kind
        self.linear = nn.Linear(k, n)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if self.kind == "relu":
            return torch.relu(y)
        if self.kind == "relu6":
            return nn.functional.relu6(y.reshape(x.shape[0], -1, y.shape[-1]))
        if self.kind == "residual":
            return torch.relu(y + r)
        if self.kind == "clamp_min":
            return torch.clamp(r + y, min=-0.5)
        if self.kind == "clamp_max":
            return torch.clamp(y, max=0.25)
        if self.kind == "mul":  # not an epilogue: the kernel runs after the GEMM
            return torch.relu(y) * 2
        if self.kind == "broadcast":  # a residual broadcast over rows is not one either
            return y + r[:1]
        return y * r  # nor a product


def _graph_pairs(kind: str) -> list:
    x, r = torch.randn(30, 40), torch.randn(30, 70)
    return pairs(lamina.compile(_Epilogue(kind), (x, r), kernel_language="c").graph)


@pytest.mark.parametrize("kind, want", [
    ("relu", Epilogue(bias=1, low=0.0)),
    ("relu6", Epilogue(bias=1, low=0.0, high=6.0)),
    ("residual", Epilogue(bias=1, residual=2, low=0.0)),
    ("clamp_min", Epilogue(bias=1, residual=2, low=-0.5)),
    ("clamp_max", Epilogue(bias=1, high=0.25)),
    ("mul", None), ("broadcast", None), ("product", None)])
def test_the_kernels_that_are_epilogues(kind: str, want: Epilogue | None) -> None:
    found = _graph_pairs(kind)
    if want is None:
        assert found == []
        return
    (pair,) = found
    operands = pair.fused.operands
    assert operands[0] is pair.linear.result
    assert (pair.epilogue.bias is not None, pair.epilogue.residual is not None) == (want.bias is not None,
                                                                                    want.residual is not None)
    assert (pair.epilogue.low, pair.epilogue.high) == (want.low, want.high)
    if want.bias is not None:
        assert operands[pair.epilogue.bias].type.shape == (70,)
    if want.residual is not None:
        assert operands[pair.epilogue.residual].type.shape == pair.fused.result.type.shape


def _inputs(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(rows)
    x, r = torch.randn(rows, 40, generator=g), torch.randn(rows, 70, generator=g)
    x[3, 5] = math.nan  # a NaN row stays NaN through the clamp
    x[7, :] = 1e30  # an overflowing row: inf and -inf, clamped or kept as eager does
    return x, r


@pytest.mark.parametrize("kind", ["relu", "relu6", "residual", "clamp_min", "clamp_max", "mul"])
def test_pairs_equal_eager_and_run_as_one_call(kind: str) -> None:
    from torch.export import Dim

    torch.manual_seed(4)
    model = _Epilogue(kind).eval()
    x, r = _inputs(61)  # ten row blocks of 6 and one of 1; 70 outputs: a partial third tile
    rows = Dim("rows", min=2)
    compiled = lamina.compile(model, (x, r), kernel_language="c", poison=True)
    generic = lamina.compile(model, (x, r), kernel_language="c", poison=True, dynamic_shapes=({0: rows}, {0: rows}))
    assert (EPILOGUE_NAME in compiled._executor.target.own) == (kind != "mul")
    with torch.no_grad():
        for module, sizes in ((compiled, (61,)), (generic, (61, 9, 8))):  # 8 rows: the GEMV, the kernel apart
            for n in sizes:
                x, r = _inputs(n)
                got, want = module(x, r), model(x, r)
                assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
                keep = want.isfinite()
                assert rel_error(got[keep], want[keep]) <= TOL, n
        model.linear.weight.mul_(-1)  # the packed weight and the bias are kept in step
        model.linear.bias.add_(0.5)
        x, r = _inputs(61)
        keep = model(x, r).isfinite()
        assert rel_error(compiled(x, r)[keep], model(x, r)[keep]) <= TOL


def test_a_strided_input_runs_the_two_calls() -> None:
    model = _Epilogue("residual").eval()
    x, r = _inputs(61)
    compiled = lamina.compile(model, (x, r), kernel_language="c", poison=True)
    wide = torch.randn(61, 80)
    with torch.no_grad():
        assert rel_error(compiled(wide[:, ::2], r), model(wide[:, ::2], r)) <= TOL


class _Bottleneck(nn.Module):
    """MobileNetV2's inverted residual on NHWC images: the expansion's input is a view of a kernel's output,
    whose arena buffer the GEMM must not share with the expansion's output while it reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(16, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(96, 96, 3, padding=1, groups=96, bias=False), nn.BatchNorm2d(96),
                                       nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(96, 16, 1, bias=False), nn.BatchNorm2d(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        h = torch.relu(h + self.project(self.depthwise(self.expand(h))))
        return self.expand(h)  # so that the residual kernel's output stays NHWC (the last one is made NCHW)


def test_an_inverted_residual_block_with_its_expansion_and_projection_paired(tmp_path) -> None:
    torch.manual_seed(5)
    model = trained_norms(_Bottleneck())
    x = torch.randn(2, 16, 20, 20)
    compiled = lamina.compile(model, (x,), kernel_language="c", poison=True)
    assert len(compiled._executor.epilogues) == 2  # expansion + ReLU6, projection + residual + ReLU
    with torch.no_grad():
        assert rel_error(compiled(x), model(x)) <= TOL
        path = tmp_path / "block.lamina"
        lamina.save(compiled, path, frozen=True)
        loaded = lamina.load(path)
        assert any(f.name == EPILOGUE_NAME for f in loaded._frozen_plan.functions)
        assert rel_error(loaded(x), model(x)) <= TOL


class _Projection(nn.Module):
    """A depthwise window (a kernel writing an arena buffer), then a projection 1x1 convolution + ReLU reading
    it last: the projection's smaller output would fit the freed input's place, which the GEMM still reads."""

    def __init__(self) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(nn.Conv2d(96, 96, 3, padding=1, groups=96), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(96, 16, 1), nn.ReLU())
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.project(self.depthwise(x))) * 2


def test_the_gemm_input_is_not_overwritten_by_its_epilogue_output() -> None:
    torch.manual_seed(6)
    model = _Projection().eval()
    x = torch.randn(2, 96, 24, 24)  # 442 KB of input: threads sweep row blocks, one ahead of the other
    compiled = lamina.compile(model, (x,), kernel_language="c", poison=True)
    assert compiled._executor.epilogues
    with torch.no_grad():
        assert rel_error(compiled(x), model(x)) <= TOL
