"""What a kernel does with its per-element indices: only affine arithmetic, or more.

A kernel whose per-element index arithmetic is affine (adds, subtracts, multiplies, casts) reads and
writes contiguous runs that LLVM vectorizes whatever its sizes; one that divides, clamps or compares
an index per element (a padded, windowed or gathered view) is fast only when those numbers are
constants LLVM can fold. ``shared_kernels`` lifts the sizes of the first kind only, and ``lower``
merges short rows only where the result stays of the first kind.
"""
from __future__ import annotations

from ..ir.dtypes import DType
from .kernel import Call, Expr, Kernel, Let, Loop, Reduce, Var, body_exprs, walk

AFFINE = frozenset({"add", "sub", "mul", "neg", "cast"})


def indexes_beyond_affine(kernel: Kernel) -> bool:
    """Whether ``kernel`` does more with a per-element integer than add, subtract, multiply or cast it:
    divides it, clamps it, compares it (a padded, windowed or gathered view)."""
    per_element = per_element_names(kernel)

    def varies(e: Expr) -> bool:
        return e.dtype is DType.i64 and any(isinstance(x, Var) and x.name in per_element for x in walk(e))

    return any(isinstance(e, Call) and e.op not in AFFINE and any(varies(a) for a in e.args)
               for expr in body_exprs(kernel.body) for e in walk(expr))


def per_element_names(kernel: Kernel) -> set[str]:
    """Names whose value changes from one element to the next: the loop variables of a kernel with
    inner loops (its ``o`` is a row) and what is bound inside them; else every name (``o`` is the
    element)."""
    if not any(isinstance(s, (Loop, Reduce)) for s in kernel.body):
        return {x.name for e in body_exprs(kernel.body) for x in walk(e) if isinstance(x, Var)} | {"o"}
    names: set[str] = set()
    for s in statements(kernel.body):
        if isinstance(s, (Loop, Reduce)):
            names.add(s.var)
            names |= {t.name for t in statements(s.body) if isinstance(t, Let)}
            names |= {t.acc for t in statements(s.body) if isinstance(t, Reduce)}
    return names


def statements(body: tuple):
    """Every statement, nested ones included."""
    for s in body:
        yield s
        if isinstance(s, (Loop, Reduce)):
            yield from statements(s.body)
