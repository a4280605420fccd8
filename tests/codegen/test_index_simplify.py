"""Index arithmetic over a loop of static length: a row's flat index split back into dims needs no division
when the row length divides (or is a multiple of) the divisor, so the index work leaves the inner loop."""
from __future__ import annotations

import itertools

import pytest
import torch

import lamina
from lamina.codegen.kernel import Call, Const, LoopVar, Var, add, canonical, const, floordiv, mod, mul, walk
from lamina.ir.dtypes import DType


def _value(e, env: dict[str, int]) -> int:
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        return env[e.name]
    a = [_value(x, env) for x in e.args]
    return {"add": lambda: a[0] + a[1], "mul": lambda: a[0] * a[1], "floordiv": lambda: a[0] // a[1],
            "mod": lambda: a[0] % a[1]}[e.op]()


@pytest.mark.parametrize("row,divisor", [(96, 96), (96, 5376), (96, 32), (96, 7), (12, 8), (8, 12), (1, 3)])
def test_simplified_division_and_remainder_equal_the_plain_ones(row: int, divisor: int) -> None:
    o, r = Var(DType.i64, "o"), LoopVar(DType.i64, "r", row)
    flat = add(mul(o, const(row)), r)
    for e, plain in ((floordiv(flat, const(divisor)), lambda v: v // divisor),
                     (mod(flat, const(divisor)), lambda v: v % divisor),
                     (mod(floordiv(flat, const(divisor)), const(7)), lambda v: v // divisor % 7)):
        for ov, rv in itertools.product(range(0, 200, 7), range(row)):
            assert _value(e, {"o": ov, "r": rv}) == plain(ov * row + rv)


def test_a_row_split_by_its_own_length_has_no_division_left() -> None:
    o, r = Var(DType.i64, "o"), LoopVar(DType.i64, "r", 96)
    flat = add(mul(o, const(96)), r)
    assert floordiv(flat, const(96)) == o and mod(flat, const(96)) == r
    divisions = [e for e in walk(floordiv(flat, const(5376))) if isinstance(e, Call) and e.op == "floordiv"]
    assert [d.args[0] for d in divisions] == [o]  # o // 56: per row, not per element
    unbounded = add(mul(o, const(96)), Var(DType.i64, "r"))  # extent unknown: nothing is assumed
    assert floordiv(unbounded, const(96)) == Call(DType.i64, "floordiv", (unbounded, const(96)))


class WindowReverse(torch.nn.Module):
    """Swin's residual after window attention: windows put back, rolled, added, then layer norm."""

    def forward(self, windows: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        x = windows.view(1, 4, 4, 3, 3, 8).permute(0, 1, 3, 2, 4, 5).reshape(1, 12, 12, 8)
        x = torch.roll(x, shifts=(1, 1), dims=(1, 2)).reshape(1, 144, 8)
        return torch.nn.functional.layer_norm(shortcut + x, (8,))


def test_window_reverse_kernel_matches_torch() -> None:
    torch.manual_seed(0)
    windows, shortcut = torch.randn(16, 9, 8), torch.randn(1, 144, 8)
    compiled = lamina.compile(WindowReverse(), (windows, shortcut), poison=True)
    torch.testing.assert_close(compiled(windows, shortcut), WindowReverse()(windows, shortcut), rtol=1e-5, atol=1e-5)
    source = "".join(compiled._executor.sources().values())
    inner = [line for line in source.splitlines() if line.startswith(" " * 12) and "//" in line]
    assert not inner, f"divisions inside the row loops: {inner}"


def test_a_quotient_and_remainder_recombine_and_a_one_iteration_loop_is_zero() -> None:
    """``(x // c) * c + x % c`` canonicalizes to ``x`` (C's and Python's division alike; checked on negatives
    too), and the index of a loop of one iteration adds and multiplies as 0: a row kernel reading its
    reduction through a size-1 axis then reads it at its own row (see the regressions below)."""
    o = Var(DType.i64, "o")
    for c in (1, 3, 16):
        q, r = floordiv(o, const(c)), mod(o, const(c))
        for whole in (add(mul(q, const(c)), r), add(r, mul(const(c), q))):
            assert canonical(whole) == o
            for ov in range(-40, 40):
                assert _value(whole, {"o": ov}) == ov
    assert canonical(add(mul(floordiv(o, const(16)), const(8)), mod(o, const(16)))) != o  # another multiple
    one = LoopVar(DType.i64, "j", 1)
    assert add(o, one) == o and mul(o, one) == const(0)


class _VarThroughUnsqueeze(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.var(x * y, dim=1, unbiased=False).unsqueeze(1) * x + y


@pytest.mark.parametrize("language", ["c", "numba"])
def test_a_reduction_over_a_middle_size_one_axis_read_back_through_unsqueeze(language: str) -> None:
    """Regression (a reduction fuzz run): var over the size-1 axis of [16, 1, 16], unsqueezed and combined,
    was refused as "read at another row than the kernel's" (a fusion bug)."""
    x, y = torch.randn(16, 1, 16), torch.randn(16, 1, 16)
    compiled = lamina.compile(_VarThroughUnsqueeze(), (x, y), poison=True, kernel_language=language)
    torch.testing.assert_close(compiled(x, y), _VarThroughUnsqueeze()(x, y), rtol=1e-5, atol=1e-6)


def test_nested_quotients_recombine() -> None:
    """``(o // 32) * 16 + (o // 2) % 16`` is ``o // 2`` (unravelling over [4, 16, 2] and linearizing back),
    and then ``(o // 2) * 2 + o % 2`` is ``o``; checked on negatives too."""
    o = Var(DType.i64, "o")
    half = floordiv(o, const(2))
    middle = add(mul(floordiv(o, const(32)), const(16)), mod(half, const(16)))
    assert canonical(middle) == half
    whole = add(mul(middle, const(2)), mod(o, const(2)))
    assert canonical(whole) == o
    for ov in range(-70, 70):
        assert _value(whole, {"o": ov}) == ov
    assert canonical(add(mul(floordiv(o, const(16)), const(16)), mod(half, const(16)))) != half  # not 2 * 16


class _MeanBackThenGlobalMax(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.tanh((x * y + 0.5).mean([0]).reshape(1, 4, 16, 2)) * x + y
        return out.amax([0, 1, 2, 3], keepdim=True) * out


@pytest.mark.parametrize("language", ["c", "numba"])
def test_a_reduction_over_the_first_axis_read_back_through_a_reshape(language: str) -> None:
    """Regression (a reduction fuzz run): a mean over axis 0 of [3, 4, 16, 2] read back through a reshape to
    [1, 4, 16, 2] was refused as "read at another row than the kernel's" (a fusion bug)."""
    x, y = torch.randn(3, 4, 16, 2), torch.randn(3, 4, 16, 2)
    compiled = lamina.compile(_MeanBackThenGlobalMax(), (x, y), poison=True, kernel_language=language)
    torch.testing.assert_close(compiled(x, y), _MeanBackThenGlobalMax()(x, y), rtol=1e-5, atol=1e-6)
