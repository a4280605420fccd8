"""Which float32 linears run lamina's C GEMM, by CPU and shape (``runtime/gemm_choice.py``), and the plans that
follow the choice: on Intel CPUs with AVX-512 (``"shape"``) narrow linears take lamina's GEMM at any number
of rows, short ones up to ``SHORT_ROWS`` rows (decided per call where the rows are symbolic), large ones
torch's. Every path is checked against eager on poisoned buffers (float32, 1e-5 relative to the output's
scale)."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.export import Dim

import lamina
from lamina.codegen.gemv_c import MAX_ROWS
from lamina.ir.dtypes import DType
from lamina.runtime.gemm_choice import NARROW, SHORT_ROWS, SHORT_WEIGHT, GemmChoice
from lamina.runtime.gemm_epilogue import runs_the_gemm
from lamina.runtime.native_kernels import compiler, cpu_features
from tests.conftest import rel_error

TOL = 1e-5
GEMV_ROWS = MAX_ROWS[DType.f32]  # up to this many rows the GEMV runs, not a GEMM
needs_avx512 = pytest.mark.skipif(compiler() is None or "avx512f" not in cpu_features(),
                                  reason="lamina's C GEMM needs a C compiler and AVX-512")


def _runs(choice: GemmChoice, rows: int, k: int, n: int) -> bool:
    """Whether ``rows`` rows of a linear with ``k`` inputs and ``n`` outputs run lamina's GEMM under ``choice``."""
    return runs_the_gemm(rows, choice.rows_limit(k, n))


def test_all_runs_every_shape_none_runs_none() -> None:
    assert GemmChoice("all").available and GemmChoice("shape").available and not GemmChoice("none").available
    assert GemmChoice("all").rows_limit(4096, 4096) == math.inf
    assert GemmChoice("none").rows_limit(16, 16) == 0
    assert not _runs(GemmChoice("none"), 64, 16, 16)
    assert _runs(GemmChoice("all"), GEMV_ROWS + 1, 4096, 4096) and not _runs(GemmChoice("all"), GEMV_ROWS, 4096, 4096)


def test_shape_takes_narrow_linears_at_any_rows_and_short_ones_over_few_rows() -> None:
    shape = GemmChoice("shape")
    assert shape.rows_limit(NARROW, 4096) == math.inf and shape.rows_limit(4096, NARROW) == math.inf
    assert shape.rows_limit(NARROW + 1, SHORT_WEIGHT // (NARROW + 1)) == SHORT_ROWS
    assert shape.rows_limit(2048, 2048) == SHORT_ROWS and shape.rows_limit(2048, 2049) == 0
    assert _runs(shape, SHORT_ROWS, 1024, 1024) and not _runs(shape, SHORT_ROWS + 1, 1024, 1024)
    assert _runs(shape, 100_000, 64, 3072)


def test_the_cpu_vendor_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    from lamina.runtime import gemm_choice

    monkeypatch.setattr(gemm_choice, "cpu_features", lambda: ["avx2", "avx512f"])
    monkeypatch.setattr(gemm_choice, "cpu_vendor", lambda: "AuthenticAMD")
    assert GemmChoice.for_this_cpu() == GemmChoice("all")
    monkeypatch.setattr(gemm_choice, "cpu_vendor", lambda: "GenuineIntel")
    assert GemmChoice.for_this_cpu() == GemmChoice("shape")
    monkeypatch.setattr(gemm_choice, "cpu_features", lambda: ["avx2"])
    assert GemmChoice.for_this_cpu() == GemmChoice("none")


class _ThreeLinears(nn.Module):
    """A narrow linear (64 inputs), a short one (320 x 320) and a large one (2100 x 2100), each with bias."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Linear(64, 320)
        self.short = nn.Linear(320, 2100)
        self.large = nn.Linear(2100, 2100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.large(torch.relu(self.short(torch.relu(self.narrow(x)))))


@pytest.fixture
def shape_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GemmChoice, "for_this_cpu", staticmethod(lambda: GemmChoice("shape")))


def _plan(compiled, x: torch.Tensor) -> str:
    return compiled._executor.plan_for([x], compiled._weights).source


@needs_avx512
@pytest.mark.usefixtures("shape_choice")
@pytest.mark.parametrize("rows, ours", [(40, {(320, 64), (2100, 320)}), (SHORT_ROWS + 44, {(320, 64)})])
def test_static_rows_take_lamina_gemm_where_the_shape_wins(rows: int, ours: set) -> None:
    """40 rows: the narrow and short linears on lamina's GEMM, the large one on torch's; 108 rows: only the
    narrow one (the short one's rows are past SHORT_ROWS)."""
    torch.manual_seed(rows)
    model, x = _ThreeLinears().eval(), torch.randn(rows, 64)
    with torch.no_grad():
        want = model(x)
        compiled = lamina.compile(model, (x,), kernel_language="c", poison=True)
        got = compiled(x)
    assert rel_error(got, want) <= TOL
    plan = _plan(compiled, x)
    # lamina's GEMM calls (with or without an epilogue) pass rows, N, K after the tensors
    called = {(int(n), int(k)) for n, k in re.findall(rf"\bG\d+\([^\n]*?, {rows}, (\d+), (\d+),", plan)}
    assert called == ours, plan


@needs_avx512
@pytest.mark.usefixtures("shape_choice")
def test_symbolic_rows_choose_per_call() -> None:
    """One plan for all row counts: the short linear runs lamina's GEMM up to SHORT_ROWS rows and torch's past
    them (the GEMV at most GEMV_ROWS); every branch equals eager."""
    torch.manual_seed(0)
    model = _ThreeLinears().eval()
    x = torch.randn(2, 24, 64)
    with torch.no_grad():
        compiled = lamina.compile(model, (x,), kernel_language="c", poison=True,
                                  dynamic_shapes=({0: Dim("batch"), 1: Dim("tokens")},))
        for batch, tokens in ((1, 3), (2, 24), (4, 64), (3, 100)):
            x = torch.randn(batch, tokens, 64)
            assert rel_error(compiled(x), model(x)) <= TOL, (batch, tokens)
    plan = _plan(compiled, x)
    ROWS = "((1 * sz_s77) * sz_s27)"
    assert f"<= {SHORT_ROWS}:" in plan and f"<= {GEMV_ROWS}:" in plan, plan  # the linear alone
    assert f"> {GEMV_ROWS} and {ROWS} <= {SHORT_ROWS} and " in plan, plan  # with its ReLU in the epilogue


class _Expansion(nn.Module):
    """A channels-last 1x1 expansion as a linear over pixels (16 -> 96 channels, narrow) with its ReLU6: the
    GEMM's epilogue adds the bias and clamps."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Linear(16, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.relu6(self.expand(x))


@needs_avx512
@pytest.mark.usefixtures("shape_choice")
def test_narrow_linears_keep_their_epilogue() -> None:
    torch.manual_seed(1)
    model, x = _Expansion().eval(), torch.randn(2, 14, 14, 16)
    with torch.no_grad():
        want = model(x)
        compiled = lamina.compile(model, (x,), kernel_language="c", poison=True)
        got = compiled(x)
    assert rel_error(got, want) <= TOL
    assert "lamina_gemm_epilogue_f32" in compiled._executor.target.own
    assert ", 392, 96, 16, 96, float('0.0'), float('6.0'))" in _plan(compiled, x)


@needs_avx512
@pytest.mark.usefixtures("shape_choice")
@pytest.mark.parametrize("options", ["bits=8,group=0", "bits=4,group=32", "bits=4,group=32,act=int8"])
def test_quantized_prefill_takes_the_quantized_gemm_wherever_the_gemm_runs(options: str) -> None:
    """On Intel's choice too, rows past the quantized kernels' go to lamina's quantized GEMM (not blocks of
    dequantized weight through torch.mm), within the interpreter's tolerance on poisoned outputs."""
    from tests.quant.test_qlinear_cpu import Layer, _check

    torch.manual_seed(5)
    compiled = _check(Layer(256, 70), torch.randn(40, 256), f"quantize{{{options},keep=none}},fuse",
                      kernel_language="c")
    assert "lamina_qgemm_f32" in compiled._executor.target.own
    assert all("C GEMM dequantizing 32-channel tiles" in layer.kernel for layer in compiled.quantization)
