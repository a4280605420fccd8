"""Kernels never read out of bounds and never divide by zero silently: they give eager's answer or its error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.errors import DivisionByZeroError, IndexOutOfRangeError

from tests.conftest import KERNEL_LANGUAGES, rel_error


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids) * 2


class Gather(nn.Module):
    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, i) + 1


class IndexSelect(nn.Module):
    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 0, i) + 1


class Subscript(nn.Module):
    def forward(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return x[i] + 1


X = torch.randn(5, 4)
CASES = {  # model, call arguments for an index tensor, a good index tensor, its valid range
    "embedding": (Embed(), lambda i: (i,), torch.tensor([[1, 9], [0, 3]]), (0, 9)),
    "gather": (Gather(), lambda i: (X, i), torch.tensor([[0, 1], [2, 3], [0, 0], [1, 1], [3, 2]]), (0, 3)),
    "index_select": (IndexSelect(), lambda i: (X, i), torch.tensor([0, 4, 2]), (0, 4)),
    "subscript": (Subscript(), lambda i: (X, i), torch.tensor([0, 4, 2]), (-5, 4)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_indices_in_range_match_eager_and_out_of_range_raise(name: str, language: str) -> None:
    model, call, good, (low, high) = CASES[name]
    compiled = lamina.compile(model, call(good), poison=True, kernel_language=language)
    torch.testing.assert_close(compiled(*call(good)), model(*call(good)))
    for value in (low - 1, high + 1, 10**9, -(10**9)):
        bad = good.clone()
        bad.view(-1)[-1] = value
        with pytest.raises((IndexError, RuntimeError)):  # gather raises a RuntimeError
            model(*call(bad))
        with pytest.raises(IndexOutOfRangeError, match=f"index {value} is out of range"):
            compiled(*call(bad))
        torch.testing.assert_close(compiled(*call(good)), model(*call(good)))  # the error state was cleared
    for value in (low, high):  # the edges are valid; negative subscripts count from the end as in torch
        edge = good.clone()
        edge.view(-1)[0] = value
        torch.testing.assert_close(compiled(*call(edge)), model(*call(edge)))


def test_falcon_style_negative_subscript_reads_from_the_end() -> None:
    class LastTwo(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[..., [-2], :] * 3  # Falcon's multi-query split

    x = torch.randn(2, 3, 5, 4)
    compiled = lamina.compile(LastTwo(), (x,), poison=True)
    torch.testing.assert_close(compiled(x), LastTwo()(x))


def test_positions_from_sizes_are_checked_once_per_plan_not_per_element() -> None:
    """Position ids arange(T) index a table of 16 rows: no check in the kernel, one test per plan, and an
    IndexError for T > 16 where eager raises too (it returned non-finite logits before)."""
    from torch.export import Dim

    from lamina.models import make_gpt2_stack

    model, (ids,) = make_gpt2_stack(n_layers=1, batch=1, seq=8)
    compiled = lamina.compile(model, (ids,), dynamic_shapes=({1: Dim("T", max=64)},), poison=True)
    kernels = compiled._executor.kernels.values()
    position_kernels = [ck for ck in kernels if any(a.what.startswith("embedding at wpe") for a in ck.kernel.assumptions)]
    assert position_kernels and all(not any("wpe" in c.what for c in ck.kernel.checks) for ck in position_kernels)
    assert any(any("wte" in c.what for c in ck.kernel.checks) for ck in kernels)  # token ids: data, checked
    for t in (3, 16):
        x = torch.randint(0, 10, (1, t))
        assert rel_error(compiled(x), model(x)) <= 1e-5
    x = torch.randint(0, 10, (1, 20))
    with pytest.raises(IndexError):
        model(x)
    with pytest.raises(IndexOutOfRangeError, match="wpe.*index 19"):
        compiled(x)


class Divide(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.how == "floor":
            return a // b + 0
        if self.how == "trunc":
            return torch.div(a, b, rounding_mode="trunc") + 0
        return getattr(torch, self.how)(a, b) + 0


@pytest.mark.parametrize("how", ["floor", "trunc", "remainder", "fmod"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32])
@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_division_modes_match_eager(how: str, dtype: torch.dtype, language: str) -> None:
    a = torch.tensor([7, -7, 7, -7, 0, 5, -9, 2**40 + 3]).to(dtype)
    b = torch.tensor([2, 2, -2, -2, 3, 5, 4, 7]).to(dtype)
    if dtype.is_floating_point:
        a, b = a * 1.37, b * 0.71
    compiled = lamina.compile(Divide(how), (a, b), poison=True, kernel_language=language)
    want = Divide(how)(a, b)
    got = compiled(a, b)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    if not dtype.is_floating_point:  # exact beyond 2**53, where a detour through float64 would round
        big = torch.tensor([2**62 + 1, -(2**62) - 3, 5, 5, 5, 5, 5, 5], dtype=dtype) if dtype == torch.int64 else a
        assert torch.equal(compiled(big, b), Divide(how)(big, b))


@pytest.mark.parametrize("how", ["floor", "trunc", "remainder", "fmod"])
@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_integer_division_by_zero_raises_as_eager_does(how: str, language: str) -> None:
    a, b = torch.tensor([6, 7, 8]), torch.tensor([1, 0, 2])
    compiled = lamina.compile(Divide(how), (a, torch.tensor([1, 2, 3])), kernel_language=language)
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        Divide(how)(a, b)
    with pytest.raises(DivisionByZeroError, match="division by zero"):
        compiled(a, b)
    assert torch.equal(compiled(a, b + 1), Divide(how)(a, b + 1))


def test_float_division_by_zero_gives_inf_and_nan_as_eager() -> None:
    a, b = torch.tensor([1.0, -1.0, 0.0, 5.0]), torch.tensor([0.0, 0.0, 0.0, -0.0])
    for how in ("floor", "remainder", "fmod"):
        compiled = lamina.compile(Divide(how), (a, b))
        torch.testing.assert_close(compiled(a, b), Divide(how)(a, b), equal_nan=True)


def test_the_reference_backend_raises_the_same_errors() -> None:
    model, call, good, _ = CASES["embedding"]
    compiled = lamina.compile(model, call(good), backend="reference")
    with pytest.raises(IndexOutOfRangeError):
        compiled(torch.tensor([[1, 10], [0, 3]]))
    compiled = lamina.compile(Divide("floor"), (torch.tensor([3]), torch.tensor([1])), backend="reference")
    with pytest.raises(DivisionByZeroError):
        compiled(torch.tensor([3]), torch.tensor([0]))
