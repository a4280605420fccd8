"""Symbolic sizes as plain Python: the code a generated wrapper runs to compute a dim per call.

A plan that serves every value of its size symbols cannot bake ``s0 + 1`` in as a number; it
computes it from the call's sizes. ``python_code`` prints a SymPy dim as Python integer arithmetic
(no SymPy at run time), and ``SizeCode`` is such an expression that the plan builder and the
targets can keep doing arithmetic on (``rows = b * h * t``) while they write the wrapper.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import sympy


class NotPrintable(ValueError):
    """A size expression with no integer Python form here (a rational coefficient, an unknown function)."""


@dataclass(frozen=True)
class SizeCode:
    """A size known only per call: Python code over the wrapper's size variables.

    Arithmetic with ints and other SizeCodes builds larger expressions; ``str`` and ``repr`` give
    the code, so a tuple of dims formats as the wrapper's shape tuple. It has no truth value: a
    decision that depends on it must be made in the wrapper, per call."""

    code: str

    def _op(self, op: str, other: Any, reflected: bool = False) -> SizeCode:
        if not isinstance(other, (int, SizeCode)) or isinstance(other, bool):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        return SizeCode(f"({a} {op} {b})")

    def __add__(self, other: Any) -> SizeCode:
        return self._op("+", other)

    def __radd__(self, other: Any) -> SizeCode:
        return self._op("+", other, True)

    def __sub__(self, other: Any) -> SizeCode:
        return self._op("-", other)

    def __rsub__(self, other: Any) -> SizeCode:
        return self._op("-", other, True)

    def __mul__(self, other: Any) -> SizeCode:
        return self._op("*", other)

    def __rmul__(self, other: Any) -> SizeCode:
        return self._op("*", other, True)

    def __floordiv__(self, other: Any) -> SizeCode:
        return self._op("//", other)

    def __rfloordiv__(self, other: Any) -> SizeCode:
        return self._op("//", other, True)

    def __mod__(self, other: Any) -> SizeCode:
        return self._op("%", other)

    def __rmod__(self, other: Any) -> SizeCode:
        return self._op("%", other, True)

    def __bool__(self) -> bool:
        raise TypeError(f"the size {self.code} is known only per call: decide on it in the wrapper")

    def __str__(self) -> str:
        return self.code

    __repr__ = __str__


Size = Union[int, SizeCode]


def is_static(*sizes: Any) -> bool:
    """Whether every size is a plain int (known when the plan is built)."""
    return all(not isinstance(s, SizeCode) for s in sizes)


def python_code(expr: Any, name_of: Callable[[sympy.Symbol], str]) -> str:
    """Integer Python code for a SymPy dim, symbols named by ``name_of``; NotPrintable when it has none."""
    if isinstance(expr, int):
        return str(expr)
    if expr.is_Integer:
        return str(int(expr))
    if expr.is_Symbol:
        return name_of(expr)
    if expr.is_Add:
        return "(" + " + ".join(python_code(a, name_of) for a in expr.args) + ")"
    if expr.is_Mul:
        if any(a.is_Rational and not a.is_Integer for a in expr.args):
            raise NotPrintable(f"{expr} has a fractional coefficient")
        return "(" + " * ".join(python_code(a, name_of) for a in expr.args) + ")"
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
        return f"({python_code(expr.base, name_of)} ** {int(expr.exp)})"
    kind = type(expr).__name__
    if kind in ("floor", "ceiling"):
        num, den = sympy.fraction(sympy.together(expr.args[0]))
        a, b = python_code(num, name_of), python_code(den, name_of)
        return f"({a} // {b})" if kind == "floor" else f"(-(-{a} // {b}))"
    if kind == "FloorDiv":
        return f"({python_code(expr.args[0], name_of)} // {python_code(expr.args[1], name_of)})"
    if kind in ("Mod", "PythonMod"):
        return f"({python_code(expr.args[0], name_of)} % {python_code(expr.args[1], name_of)})"
    if kind in ("Max", "Min"):
        return f"{kind.lower()}({', '.join(python_code(a, name_of) for a in expr.args)})"
    raise NotPrintable(f"no integer Python form for the size {expr} ({kind})")


def nondecreasing(expr: Any) -> bool:
    """Whether a dim provably never shrinks when a (positive) symbol grows: sums and products of
    symbols with positive coefficients, floor division by a constant, max and min. Conservative."""
    if isinstance(expr, int) or expr.is_Integer or expr.is_Symbol:
        return True
    if expr.is_Add:
        return all(a.is_Integer or nondecreasing(a) for a in expr.args)
    if expr.is_Mul:
        coeff, rest = expr.as_coeff_Mul()
        return coeff > 0 and all(nondecreasing(f) for f in sympy.Mul.make_args(rest))
    if expr.is_Pow:
        return expr.exp.is_Integer and expr.exp > 0 and nondecreasing(expr.base)
    kind = type(expr).__name__
    if kind == "floor":
        num, den = sympy.fraction(sympy.together(expr.args[0]))
        return den.is_Integer and den > 0 and nondecreasing(num)
    if kind == "FloorDiv":
        return expr.args[1].is_Integer and expr.args[1] > 0 and nondecreasing(expr.args[0])
    if kind in ("Max", "Min"):
        return all(nondecreasing(a) for a in expr.args)
    return False


def size_variable(symbol: Any) -> str:
    """The Python name a generated function gives a size symbol."""
    return "sz_" + re.sub(r"\W", "_", str(symbol))


def size_tuple(symbols: Any) -> str:
    """The size variables of ``symbols`` as a tuple's items (``sz_B, sz_T, ``): to unpack or to return."""
    return "".join(f"{size_variable(s)}, " for s in symbols)
