"""Row kernels over short rows run their per-row transcendental vectorized over blocks of rows
(codegen/row_blocks.py): the same outputs as eager, float32 within 1e-5 relative (the block's
``lm_log32`` is within 1 ulp, as libm's ``logf``), every element written (poisoned outputs), partial
last blocks and NaN / inf rows included; wide rows and few rows keep one row at a time."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.row_blocks import BLOCK, MAX_WIDTH, MIN_BLOCKS
from lamina.runtime import native_kernels
from tests.conftest import rel_error

pytestmark = pytest.mark.skipif(native_kernels.compiler() is None, reason="no C compiler on this machine")

F32_TOL = 1e-5
ROWS = BLOCK * MIN_BLOCKS + 7  # the last block partial


class _LogSoftmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(x, dim=-1)


class _TanhOfRowSum(nn.Module):
    """A row value used after the math (the max) and two math lets in a row (tanh, then exp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x.amax(dim=-1, keepdim=True)
        return (x - top) * torch.exp(torch.tanh(x.sum(dim=-1, keepdim=True)))


def _blocked(compiled: lamina.CompiledModule) -> bool:
    return any("ob_ += " in f.source for f in compiled._executor.target.functions)


def _rows(width: int, rows: int = ROWS) -> torch.Tensor:
    x = torch.randn(rows, width) * 4
    x[3, 5] = float("nan")
    x[20, :] = float("-inf")
    x[21, 2] = float("inf")
    x[rows - 1, 0] = float("nan")  # in the partial block
    return x


@pytest.mark.parametrize("width", [16, 24, MAX_WIDTH])
@pytest.mark.parametrize("model", [_LogSoftmax(), _TanhOfRowSum()], ids=["log_softmax", "tanh_of_row_sum"])
def test_short_rows_run_blocked_and_equal_eager(width: int, model: nn.Module) -> None:
    x = _rows(width)
    compiled = lamina.compile(model, (x,), kernel_language="c", poison=True)
    assert _blocked(compiled)
    got, want = compiled(x), model(x)
    assert torch.equal(got.isnan(), want.isnan())
    assert rel_error(got.nan_to_num(), want.nan_to_num()) <= F32_TOL
    y = torch.randn(ROWS, width)  # a second call, other values, the same plan
    assert rel_error(compiled(y), model(y)) <= F32_TOL


@pytest.mark.parametrize("shape", [(ROWS, MAX_WIDTH * 2), (BLOCK * MIN_BLOCKS - 1, 32)], ids=["wide_rows", "few_rows"])
def test_wide_rows_and_few_rows_stay_one_row_at_a_time(shape: tuple[int, int]) -> None:
    x = torch.randn(*shape)
    compiled = lamina.compile(_LogSoftmax(), (x,), kernel_language="c", poison=True)
    assert not _blocked(compiled)
    assert rel_error(compiled(x), _LogSoftmax()(x)) <= F32_TOL


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_16_bit_short_rows_run_blocked_within_their_type(dtype: torch.dtype, tol: float) -> None:
    """16-bit rows are computed in float32 and rounded once at the store: against the float64 result and
    against eager, within the type's tolerance (``tests/test_api.py``'s)."""
    x = (torch.randn(ROWS, 48) * 3).to(dtype)
    compiled = lamina.compile(_LogSoftmax(), (x,), kernel_language="c", poison=True)
    assert _blocked(compiled)
    exact = torch.log_softmax(x.double(), dim=-1)
    got, eager = compiled(x).double(), _LogSoftmax()(x).double()
    assert rel_error(got, exact) <= tol and rel_error(got, eager) <= tol
