"""A row kernel's per-row transcendental, run vectorized over a block of rows (C kernels).

A log_softmax computes per row a max, a sum of exponentials, then ``log(sum)`` once, and writes the row.
That one ``logf`` per row is a scalar libm call between two vectorized loops, and over short rows it
weighs. Split into phases over a block of ``BLOCK`` rows, the kernel runs the reductions of every row
of the block (their results kept in small arrays), then the row values' math once for the block as one
loop the compiler vectorizes (``lm_log32`` on 16 rows at once, the prelude's function every loop
uses, within 1 ulp as libm's is), then the rest of every row. Only the interleaving of rows changes,
which no kernel can observe (a kernel's outputs never share memory with its inputs, and each row
writes its own elements).

Only where it pays: rows of at most ``MAX_WIDTH`` elements, the row count static and at least
``MIN_BLOCKS`` blocks (so every thread still gets many), and the math a float32 call the prelude
vectorizes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.dtypes import DType
from .fastmath32 import FLOAT32_COMPUTED, FUNCTIONS
from .kernel import Call, Const, Expr, Let, Load, Reduce, Var, body_exprs, walk

BLOCK = 16  # rows per block: one vector of float32 row values
MIN_BLOCKS = 64  # fewer blocks than this and the kernel keeps one row at a time
MAX_WIDTH = 64  # longest row (elements) blocked


@dataclass(frozen=True)
class RowPhases:
    """A row body as: ``before`` (the reductions), ``math`` (row values only: lets without loads),
    ``after`` (the rest); ``carried`` the values one phase hands a later one, name -> dtype, of which
    ``math`` reads ``into_math`` and ``after`` reads ``into_after``."""

    before: tuple
    math: tuple[Let, ...]
    after: tuple
    carried: dict[str, DType]
    into_math: frozenset[str]
    into_after: frozenset[str]


def row_phases(body: tuple, row_var: str, rows: Expr) -> RowPhases | None:
    """``body`` (one row of a row kernel, over ``row_var`` in ``[0, rows)``) split into phases, or None
    when it has no per-row vectorizable call or too few rows to block."""
    if not isinstance(rows, Const) or int(rows.value) < BLOCK * MIN_BLOCKS:
        return None
    start = next((i for i, s in enumerate(body) if _row_math(s, row_var) and _vector_call(s.value)), None)
    if start is None or not any(isinstance(s, Reduce) for s in body[:start]) or not _narrow(body[:start]):
        return None
    stop = start
    while stop < len(body) and _row_math(body[stop], row_var):
        stop += 1
    before, math, after = body[:start], body[start:stop], body[stop:]
    defined_before = _defined(before)
    defined_math = {s.name: s.value.dtype for s in math}
    into_math = frozenset(_used(math) & defined_before.keys())
    into_after = frozenset(_used(after) & (defined_before.keys() | defined_math.keys()))
    carried = {n: t for n, t in {**defined_before, **defined_math}.items() if n in into_math | into_after}
    return RowPhases(before, tuple(math), after, carried, into_math, into_after)


def _narrow(before: tuple) -> bool:
    """Whether the reductions run over static rows of at most ``MAX_WIDTH`` elements, where the per-row
    call weighs: log_softmax kernels on a Xeon, blocked against one row at a time, over rows of 16
    elements 510 against 758 us, 32: 354 / 373, 64: 290 / 302, but 128: 486 / 478, 256: 1041 / 925 and
    1024: 1213 / 1178 (a wider block of rows no longer stays in the L1 cache between the passes)."""
    reductions = [s for s in before if isinstance(s, Reduce)]
    return all(isinstance(s.extent, Const) and int(s.extent.value) <= MAX_WIDTH for s in reductions)


def _row_math(s: object, row_var: str) -> bool:
    """A let of row values alone: no load, no use of the row index."""
    return isinstance(s, Let) and not any(isinstance(e, Load) or (isinstance(e, Var) and e.name == row_var)
                                          for e in walk(s.value))


def _vector_call(e: Expr) -> bool:
    return any(isinstance(x, Call) and x.op in FUNCTIONS and x.dtype in FLOAT32_COMPUTED for x in walk(e))


def _defined(body: tuple) -> dict[str, DType]:
    """The names a statement list binds at its own level (lets and reductions' results)."""
    names: dict[str, DType] = {}
    for s in body:
        if isinstance(s, Let):
            names[s.name] = s.value.dtype
        elif isinstance(s, Reduce):
            names[s.acc] = s.dtype
    return names


def _used(body: tuple) -> set[str]:
    return {e.name for x in body_exprs(body) for e in walk(x) if isinstance(e, Var)}

