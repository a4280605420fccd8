"""What a kernel does with its per-element indices: only affine arithmetic, or more.

A kernel whose per-element index arithmetic is affine (adds, subtracts, multiplies, casts) reads and
writes contiguous runs that LLVM vectorizes whatever its sizes; one that divides, clamps or compares
an index per element (a padded, windowed or gathered view) is fast only when those numbers are
constants LLVM can fold. ``shared_kernels`` lifts the sizes of the first kind only, and ``lower``
merges short rows only where the result stays of the first kind.

A row kernel whose inner loop reads across the memory layout (a layer norm over the channels of an
NCHW tensor seen through a permute: consecutive elements of the row 3136 floats apart) is of the
second kind too: with the stride a variable, ConvNeXt-T's norms ran 2x slower.
"""
from __future__ import annotations

from ..ir.dtypes import DType
from .kernel import Call, Const, Expr, Kernel, Let, Load, Loop, Reduce, Var, body_exprs, inline_lets, walk

AFFINE = frozenset({"add", "sub", "mul", "neg", "cast"})


def indexes_beyond_affine(kernel: Kernel) -> bool:
    """Whether ``kernel`` does more with a per-element integer than add, subtract, multiply or cast it:
    divides it, clamps it, compares it (a padded, windowed or gathered view)."""
    per_element = per_element_names(kernel)

    def varies(e: Expr) -> bool:
        return e.dtype is DType.i64 and any(isinstance(x, Var) and x.name in per_element for x in walk(e))

    return any(isinstance(e, Call) and e.op not in AFFINE and any(varies(a) for a in e.args)
               for expr in body_exprs(kernel.body) for e in walk(expr))


def strided_inner_reads(kernel: Kernel) -> bool:
    """Whether an inner loop of ``kernel`` loads with a step other than 0 or 1 element per iteration
    (or one that is not a constant): a gather across the memory layout."""
    for loop in statements(kernel.body):
        if not isinstance(loop, (Loop, Reduce)):
            continue
        lets = {s.name: s.value for s in loop.body if isinstance(s, Let)}
        for expr in body_exprs(loop.body):
            for e in walk(expr):
                if isinstance(e, Load) and _step(inline_lets(e.index, lets), loop.var) not in (0, 1):
                    return True
    return False


def _step(index: Expr, var: str) -> int | None:
    """How far ``index`` moves when ``var`` grows by one: a constant when ``index`` is affine in ``var``
    with constant coefficients (other names are fixed for the loop), else None."""
    if not any(isinstance(e, Var) and e.name == var for e in walk(index)):
        return 0
    if isinstance(index, Var):
        return 1
    if not isinstance(index, Call):
        return None  # a load inside the index: an indirect read
    steps = [_step(a, var) for a in index.args]
    if any(s is None for s in steps):
        return None
    if index.op in ("add", "sub") and len(steps) == 2:
        return steps[0] + steps[1] if index.op == "add" else steps[0] - steps[1]
    if index.op in ("neg", "cast"):
        return -steps[0] if index.op == "neg" else steps[0]
    if index.op == "mul" and len(steps) == 2:
        (a, b), (sa, sb) = index.args, steps
        if sb == 0 and isinstance(b, Const):
            return sa * int(b.value)
        if sa == 0 and isinstance(a, Const):
            return sb * int(a.value)
    return None


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
