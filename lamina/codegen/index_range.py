"""Bounds of integer index tensors, read off the ops that made them.

A kernel that gathers with an index it cannot prove in range checks every index it reads
(``checked_index``). Many indices are made inside the graph from sizes alone: position ids
``arange(past, past + T)``, a causal mask's rows, a rotary table's slice. Their bounds are
expressions in the size symbols, so the check becomes one test per plan instead of one per
element (see ``IndexAssumption``), or disappears when the bounds fit for every size.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sympy

from ..ir.core import Op, Value
from ..ir.shapes import at_least
from ..ir.targets import OpTable

Producers = Mapping[int, tuple[Op, int]]


@dataclass(frozen=True)
class Range:
    """Every element lies in ``[lo, hi]``; with ``exact`` both bounds are attained (they are the
    tensor's min and max), so a bound outside a dim is an index error, not a loose estimate."""

    lo: Any
    hi: Any
    exact: bool


Rule = Callable[[Op, "Producers"], "Range | None"]
RANGES: OpTable[Rule] = OpTable("index-range", "range rule")  # op -> the range of its integer result


def index_range(v: Value, producers: Producers) -> Range | None:
    """The range of integer tensor ``v``, or None when it depends on data (a graph input, a load)."""
    if not v.type.dtype.is_int:
        return None
    if any(isinstance(d, int) and d == 0 for d in v.type.shape):
        return None  # empty: nothing to bound
    found = producers.get(id(v))
    if found is None or found[0].name not in RANGES:
        return None
    op = found[0]
    return RANGES.get(op.name)(op, producers)


@RANGES.register("full")
def _full(op: Op, producers: Producers) -> Range | None:
    return Range(int(op.attrs["value"]), int(op.attrs["value"]), True)


@RANGES.register("arange")
def _arange(op: Op, producers: Producers) -> Range | None:
    start, end, step = op.attrs["start"], op.attrs["end"], op.attrs["step"]
    n = sympy.ceiling(sympy.sympify(end - start) / step)
    if n.is_positive is not True:
        return None  # possibly empty
    last = start + step * (n - 1)
    return Range(start, last, True) if step > 0 else Range(last, start, True)


@RANGES.register("reshape", "permute", "expand", "identity", "dropout")
def _same_elements(op: Op, producers: Producers) -> Range | None:
    """The result holds exactly the elements of the first operand, in another arrangement."""
    return index_range(op.operands[0], producers)


@RANGES.register("cast")
def _cast(op: Op, producers: Producers) -> Range | None:
    return index_range(op.operands[0], producers) if op.operands[0].type.dtype.is_int else None


@RANGES.register("slice", "split")
def _some_elements(op: Op, producers: Producers) -> Range | None:
    """Some of the first operand's elements: its bounds hold, but need not be attained."""
    r = index_range(op.operands[0], producers)
    return Range(r.lo, r.hi, False) if r else None


def _constant(r: Range | None) -> bool:
    return r is not None and r.exact and sympy.sympify(r.lo - r.hi) == 0


def _binary(combine: Callable[[Range, Range], Range | None]) -> Rule:
    def rule(op: Op, producers: Producers) -> Range | None:
        ranges = [index_range(x, producers) for x in op.operands[-2:]]  # where: either branch
        if any(r is None for r in ranges):
            return None
        return combine(*ranges)

    return rule


RANGES.register("add")(_binary(lambda a, b: Range(a.lo + b.lo, a.hi + b.hi,
                                                  a.exact and b.exact and (_constant(a) or _constant(b)))))
RANGES.register("sub")(_binary(lambda a, b: Range(a.lo - b.hi, a.hi - b.lo, a.exact and _constant(b))))
RANGES.register("mul")(_binary(lambda a, b: Range(a.lo * b.lo, a.hi * b.lo, a.exact)
                               if _constant(b) and sympy.sympify(b.lo).is_nonnegative else None))
RANGES.register("maximum")(_binary(lambda a, b: Range(sympy.Max(a.lo, b.lo), sympy.Max(a.hi, b.hi), False)))
RANGES.register("minimum")(_binary(lambda a, b: Range(sympy.Min(a.lo, b.lo), sympy.Min(a.hi, b.hi), False)))
RANGES.register("where")(_binary(lambda a, b: Range(sympy.Min(a.lo, b.lo), sympy.Max(a.hi, b.hi), False)))


@RANGES.register("clamp")
def _clamp(op: Op, producers: Producers) -> Range | None:
    r, low, high = index_range(op.operands[0], producers), op.attrs["min"], op.attrs["max"]
    if r is None and (low is None or high is None):
        return None
    lo = sympy.ceiling(low) if low is not None else None
    hi = sympy.floor(high) if high is not None else None
    if r is not None:
        lo = r.lo if lo is None else sympy.Max(r.lo, lo)
        hi = r.hi if hi is None else sympy.Min(r.hi, hi)
    return Range(lo, hi, False)


def fits(r: Range, size: Any, wrap: bool) -> tuple[bool | None, bool | None]:
    """(lower bound fits, upper bound fits) for indices into a dim of ``size``; None: depends on sizes."""
    return at_least(r.lo, -size if wrap else 0), at_least(size - 1, r.hi)


def nonnegative(r: Range | None) -> bool:
    return r is not None and at_least(r.lo, 0) is True
