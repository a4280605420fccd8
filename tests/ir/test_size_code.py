"""Size expressions printed as Python (what a generic plan computes per call) and the fast shape binder."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy

from lamina.ir.binder import ShapeBinder
from lamina.ir.dtypes import DType
from lamina.ir.interpreter import bind_symbols
from lamina.ir.shapes import evaluate, symbol
from lamina.ir.size_code import NotPrintable, SizeCode, is_static, nondecreasing, python_code, size_variable
from lamina.ir.types import TensorType

B, T = symbol("B"), symbol("T")
EXPRESSIONS = [B, B * T, T + 1, 2 * T - 1, sympy.floor(T / 2), sympy.floor((T + 3) / 4), sympy.ceiling(T / 3),
               sympy.Mod(T, 3), sympy.Max(B, T), sympy.Min(T, 7) * B, (T + 1) ** 2, B * (T - 1) + 5]


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=str)
def test_python_code_computes_what_sympy_does(expr: sympy.Expr) -> None:
    fn = eval(f"lambda sz_B, sz_T: {python_code(expr, size_variable)}")  # noqa: S307 - the code under test
    for b, t in itertools.product((1, 2, 5), (1, 2, 3, 7, 8, 33)):
        assert fn(b, t) == evaluate(expr, {B: b, T: t}), (expr, b, t)


def test_a_fraction_has_no_python_form() -> None:
    with pytest.raises(NotPrintable, match="fractional"):
        python_code(T / 2, size_variable)


def test_nondecreasing_is_proved_for_sizes_and_refused_otherwise() -> None:
    assert all(nondecreasing(e) for e in (B * T, T + 1, 2 * T - 1, sympy.floor(T / 2), sympy.Max(B, T), (T + 1) ** 2))
    assert not any(nondecreasing(e) for e in (sympy.Mod(T, 3), 10 - T, -2 * T + 100, sympy.floor(8 / T)))


def test_size_code_is_arithmetic_on_code_and_has_no_truth_value() -> None:
    s = SizeCode("sz_T")
    assert str(2 * s + 1) == "((2 * sz_T) + 1)" and repr((1, s)) == "(1, sz_T)"
    assert str(s // 4 - s % 4) == "((sz_T // 4) - (sz_T % 4))"
    assert is_static(1, 2) and not is_static(1, s)
    with pytest.raises(TypeError, match="per call"):
        bool(s)


def _types(*shapes: tuple) -> list[TensorType]:
    return [TensorType(shape, DType.f32) for shape in shapes]


def test_the_binder_agrees_with_bind_symbols() -> None:
    types = _types((B, T), (1, 2, T, 16), (B, 2 * T))
    binder = ShapeBinder(types)
    assert binder.source is not None and binder.symbols == (B, T)
    for b, t in itertools.product((1, 3), (1, 4, 9)):
        shapes = [(b, t), (1, 2, t, 16), (b, 2 * t)]
        want = bind_symbols(types, [np.empty(s, dtype=bool) for s in shapes])
        assert binder(shapes) == (want[B], want[T])


@pytest.mark.parametrize("shapes, message", [
    ([(2, 4), (1, 2, 5, 16), (2, 8)], "expected shape"),   # T disagrees between inputs
    ([(2, 4), (1, 3, 4, 16), (2, 8)], "expected shape"),   # a static dim differs
    ([(2, 4), (1, 2, 4), (2, 8)], "expected rank"),
    ([(2, 4), (1, 2, 4, 16), (2, 9)], "expected shape"),   # 2*T
    ([(0, 4), (1, 2, 4, 16), (0, 8)], "expected shape"),   # symbols are positive
])
def test_the_binder_refuses_what_bind_symbols_refuses(shapes: list, message: str) -> None:
    binder = ShapeBinder(_types((B, T), (1, 2, T, 16), (B, 2 * T)))
    with pytest.raises(ValueError, match=message):
        binder(shapes)


def test_a_symbol_only_inside_an_expression_is_solved() -> None:
    binder = ShapeBinder(_types((2 * T, 4)))
    assert binder.source is None and binder([(10, 4)]) == (5,)
    with pytest.raises(ValueError):
        binder([(9, 4)])
