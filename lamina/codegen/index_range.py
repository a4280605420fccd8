"""Bounds of integer index tensors, read off the ops that made them.

A kernel that gathers with an index it cannot prove in range checks every index it reads
(``checked_index``). Many indices are made inside the graph from sizes alone: position ids
``arange(past, past + T)``, a causal mask's rows, a rotary table's slice. Their bounds are
expressions in the size symbols, so the check becomes one test per plan instead of one per
element (see ``IndexAssumption``), or disappears when the bounds fit for every size.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sympy

from ..ir.core import Op, Value

Producers = Mapping[int, tuple[Op, int]]


@dataclass(frozen=True)
class Range:
    """Every element lies in ``[lo, hi]``; with ``exact`` both bounds are attained (they are the
    tensor's min and max), so a bound outside a dim is an index error, not a loose estimate."""

    lo: Any
    hi: Any
    exact: bool


# ops whose result holds exactly the elements of their first operand (in another arrangement)
_SAME_ELEMENTS = frozenset({"reshape", "permute", "expand", "identity", "dropout"})
# ops whose result holds some of their first operand's elements
_SOME_ELEMENTS = frozenset({"slice", "split"})


def index_range(v: Value, producers: Producers) -> Range | None:
    """The range of integer tensor ``v``, or None when it depends on data (a graph input, a load)."""
    if not v.type.dtype.is_int:
        return None
    if any(isinstance(d, int) and d == 0 for d in v.type.shape):
        return None  # empty: nothing to bound
    found = producers.get(id(v))
    if found is None:
        return None
    op, _ = found
    name, attrs = op.name, op.attrs
    if name == "full":
        return Range(int(attrs["value"]), int(attrs["value"]), True)
    if name == "arange":
        return _arange(attrs["start"], attrs["end"], attrs["step"])
    if name in _SAME_ELEMENTS or (name == "cast" and op.operands[0].type.dtype.is_int):
        return index_range(op.operands[0], producers)
    if name in _SOME_ELEMENTS:
        r = index_range(op.operands[0], producers)
        return Range(r.lo, r.hi, False) if r else None
    if name in ("add", "sub", "mul", "maximum", "minimum", "where"):
        return _combine(op, [index_range(x, producers) for x in op.operands])
    if name == "clamp":
        return _clamp(index_range(op.operands[0], producers), attrs["min"], attrs["max"])
    return None


def _arange(start: Any, end: Any, step: int) -> Range | None:
    n = sympy.ceiling(sympy.sympify(end - start) / step)
    if n.is_positive is not True:
        return None  # possibly empty
    last = start + step * (n - 1)
    return Range(start, last, True) if step > 0 else Range(last, start, True)


def _constant(r: Range | None) -> bool:
    return r is not None and r.exact and sympy.sympify(r.lo - r.hi) == 0


def _combine(op: Op, ranges: list[Range | None]) -> Range | None:
    if op.name == "where":
        ranges = ranges[1:]
    if any(r is None for r in ranges):
        return None
    a, b = ranges
    one_constant = _constant(a) or _constant(b)
    if op.name == "add":
        return Range(a.lo + b.lo, a.hi + b.hi, a.exact and b.exact and one_constant)
    if op.name == "sub":
        return Range(a.lo - b.hi, a.hi - b.lo, a.exact and _constant(b))
    if op.name == "mul":
        if not (_constant(b) and sympy.sympify(b.lo).is_nonnegative):
            return None
        return Range(a.lo * b.lo, a.hi * b.lo, a.exact)
    if op.name == "maximum":
        return Range(sympy.Max(a.lo, b.lo), sympy.Max(a.hi, b.hi), False)
    if op.name == "minimum":
        return Range(sympy.Min(a.lo, b.lo), sympy.Min(a.hi, b.hi), False)
    return Range(sympy.Min(a.lo, b.lo), sympy.Max(a.hi, b.hi), False)  # where: either branch


def _clamp(r: Range | None, low: float | None, high: float | None) -> Range | None:
    if r is None and (low is None or high is None):
        return None
    lo = sympy.ceiling(low) if low is not None else None
    hi = sympy.floor(high) if high is not None else None
    if r is not None:
        lo = r.lo if lo is None else sympy.Max(r.lo, lo)
        hi = r.hi if hi is None else sympy.Min(r.hi, hi)
    return Range(lo, hi, False)


def at_least(a: Any, b: Any) -> bool | None:
    """Whether ``a >= b`` for every value of the size symbols (True), for none (False), or it depends (None)."""
    diff = sympy.simplify(sympy.sympify(a) - sympy.sympify(b))
    return diff.is_nonnegative


def fits(r: Range, size: Any, wrap: bool) -> tuple[bool | None, bool | None]:
    """(lower bound fits, upper bound fits) for indices into a dim of ``size``; None: depends on sizes."""
    return at_least(r.lo, -size if wrap else 0), at_least(size - 1, r.hi)


def nonnegative(r: Range | None) -> bool:
    return r is not None and at_least(r.lo, 0) is True
