"""The C GEMV of the cpu backend (``codegen/gemv_c.py``): a ``linear`` over few rows (decoding) reads
its weight once in a kernel of lamina's own, in float32, bfloat16 and float16; past ``MAX_ROWS`` rows,
or for a strided input, torch's linear runs.

Tolerances: float32 1e-5 relative (another summation order than MKL's); 16-bit types one unit in the
last place of the type relative to the output's scale (one rounding of a float32 sum, as torch's)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.gemv_c import MAX_ROWS
from lamina.ir.dtypes import DType
from lamina.runtime.gemm_choice import GemmChoice
from lamina.runtime.native_kernels import compiler
from tests.conftest import rel_error

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C compiler")

TOL = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10}
DTYPES = {torch.float32: DType.f32, torch.bfloat16: DType.bf16, torch.float16: DType.f16}
GEMV_CALL = re.compile(r"\bG\d+\(")


@pytest.fixture(autouse=True)
def torch_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the GEMV's rows torch's linear (the C GEMM, where a CPU takes it: tests/runtime/test_gemm.py)."""
    monkeypatch.setattr(GemmChoice, "for_this_cpu", staticmethod(lambda: GemmChoice("none")))


class _Linears(nn.Module):
    """A linear with bias, one without, and sizes that are not multiples of a vector (odd K and N)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(97, 83)
        self.b = nn.Linear(83, 45, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _source(compiled, x: torch.Tensor) -> str:
    return compiled._executor.plan_for([x], compiled._weights).source


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("pipeline", ["canonicalize,fuse", "canonicalize"])  # without fuse the GEMV adds the bias
def test_few_rows_run_the_gemv_and_more_rows_torch(dtype: torch.dtype, pipeline: str) -> None:
    torch.manual_seed(0)
    model = _Linears().to(dtype).eval()
    limit = MAX_ROWS[DTYPES[dtype]]
    for rows in sorted({1, 2, 3, limit, limit + 1}):
        x = torch.randn(rows, 97).to(dtype)
        compiled = lamina.compile(model, (x,), poison=True, kernel_language="c", pipeline=pipeline)
        with torch.no_grad():
            got, want = compiled(x), model(x)
        assert got.dtype == dtype
        assert rel_error(got.float(), want.float()) <= TOL[dtype], (dtype, rows)
        assert bool(GEMV_CALL.search(_source(compiled, x))) == (rows <= limit), (dtype, rows)


def test_the_gemv_sums_in_float32_and_rounds_once() -> None:
    """A bfloat16 GEMV equals the exact product rounded once to bfloat16 on almost every output (torch's
    own linear is no closer): the sum is float32, not rounded along the way."""
    torch.manual_seed(1)
    w = torch.randn(4096, 1024).to(torch.bfloat16) * 0.05
    model = nn.Linear(1024, 4096, bias=False).to(torch.bfloat16).eval()
    model.weight.data.copy_(w)
    x = torch.randn(1, 1024).to(torch.bfloat16)
    compiled = lamina.compile(model, (x,), poison=True, kernel_language="c")
    with torch.no_grad():
        got = compiled(x)
    exact = (x.double() @ w.double().t()).to(torch.bfloat16)
    assert (got != exact).sum().item() <= 8  # of 4096: the float32 sum's own rounding


def test_a_strided_input_and_a_symbolic_row_count_choose_per_call() -> None:
    from torch.export import Dim

    torch.manual_seed(0)
    model = _Linears().eval()
    x = torch.randn(3, 97)
    compiled = lamina.compile(model, (x,), dynamic_shapes=({0: Dim("rows", min=1, max=64)},), kernel_language="c")
    with torch.no_grad():
        for rows in (1, 5, 8, 9, 33):
            x = torch.randn(rows, 97)
            assert rel_error(compiled(x), model(x)) <= TOL[torch.float32], rows
        wide = torch.randn(2, 194)[:, ::2]  # not contiguous: torch's linear
        assert rel_error(compiled(wide), model(wide)) <= TOL[torch.float32]
    source = _source(compiled, x)
    assert f"<= {MAX_ROWS[DType.f32]}" in source and "torch.mm(" in source and GEMV_CALL.search(source)


def test_weights_changed_in_place_reach_the_gemv() -> None:
    torch.manual_seed(0)
    model = _Linears().eval()
    x = torch.randn(1, 97)
    compiled = lamina.compile(model, (x,), kernel_language="c")
    with torch.no_grad():
        compiled(x)
        model.a.weight.mul_(-2.0)
        assert rel_error(compiled(x), model(x)) <= TOL[torch.float32]


def test_a_frozen_module_carries_the_gemv(tmp_path) -> None:
    """A saved module's plan calls the GEMV from the library it carries (no Numba, no recompiling)."""
    torch.manual_seed(0)
    model = _Linears().eval()
    x = torch.randn(1, 97)
    compiled = lamina.compile(model, (x,), kernel_language="c")
    path = tmp_path / "linears.lamina"
    lamina.save(compiled, path, frozen=True)
    loaded = lamina.load(path)
    plan = loaded._frozen_plan
    assert GEMV_CALL.search(plan.source)
    assert any(f.name == "lamina_gemv_f32" for f in plan.functions)
    with torch.no_grad():
        assert rel_error(loaded(x), model(x)) <= TOL[torch.float32]
