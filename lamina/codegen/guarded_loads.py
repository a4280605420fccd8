"""Reads of padded windows as loads under their guard, for targets that vectorize those (C with gcc).

A padded convolution or pool reads ``where(inside, x[row(min(max(i, 0), n - 1))], pad)``: the
index is clamped so that the load stays in bounds when ``inside`` is false. LLVM vectorizes that
load as a gather; gcc does not vectorize it at all, but it does vectorize ``inside ? x[row(i)] :
pad``, a masked load of an affine index. ``unclamped_index`` drops each clamp the guard proves
redundant (it contains ``i >= 0`` and ``i < n``): where the guard holds the clamp changes nothing,
and where it does not the load is not executed. ``guarded_read`` first drops what the inner loop's
range decides (a stride-2 window's ``2 * j < 112`` for ``j < 56``), so that the guard left is often
the row's alone, which gcc moves out of the loop.
"""
from __future__ import annotations

from ..ir.dtypes import DType
from .kernel import Call, Const, Expr, Let, Load, Loop, LoopVar, Reduce, Var, body_exprs, inline_lets, walk
from .loop_split import Interval, simplify



def conjuncts(cond: Expr) -> list[Expr]:
    """The terms of a chain of ``logical_and``."""
    if isinstance(cond, Call) and cond.op == "logical_and":
        return [t for a in cond.args for t in conjuncts(a)]
    return [cond]


def _upper(hi: Expr) -> Expr | None:
    """``n`` for a clamp's upper end ``n - 1``."""
    if isinstance(hi, Call) and hi.op == "sub" and isinstance(hi.args[1], Const) and hi.args[1].value == 1:
        return hi.args[0]
    if isinstance(hi, Const):
        return Const(hi.dtype, hi.value + 1)
    return None


def _clamped(e: Expr) -> tuple[Expr, bool, Expr | None] | None:
    """``(i, low, n)`` when ``e`` clamps ``i``: ``min(max(i, 0), n - 1)`` (both ends), or what is left of
    it once a loop's range decided one end: ``max(i, 0)`` (low only, n None), ``min(i, n - 1)`` (low False)."""
    if not isinstance(e, Call) or e.op not in ("min", "max"):
        return None
    if e.op == "max":
        return (e.args[0], True, None) if isinstance(e.args[1], Const) and e.args[1].value == 0 else None
    n = _upper(e.args[1])
    if n is None:
        return None
    inner = e.args[0]
    if isinstance(inner, Call) and inner.op == "max" and isinstance(inner.args[1], Const) and inner.args[1].value == 0:
        return inner.args[0], True, n
    return inner, False, n


def _proves(atoms: list[Expr], i: Expr, low: bool, n: Expr | None) -> bool:
    """Whether the guard's terms include ``i >= 0`` (when ``low``) and ``i < n`` (when ``n`` is given)."""
    has_low = has_high = False
    for a in atoms:
        if isinstance(a, Call) and len(a.args) == 2 and a.args[0] == i:
            other = a.args[1]
            has_low |= a.op == "ge" and isinstance(other, Const) and other.value == 0
            has_high |= a.op == "lt" and n is not None and (
                other == n or (isinstance(other, Const) and isinstance(n, Const) and other.value == n.value))
    return (has_low or not low) and (has_high or n is None)


def unclamped_index(guard: Expr, index: Expr) -> Expr | None:
    """``index`` without the clamps ``guard`` makes redundant (see the module doc), or None when it has none.
    Both expressions have their lets inlined."""
    atoms = conjuncts(guard)
    changed = False

    def rewrite(e: Expr) -> Expr:
        nonlocal changed
        clamp = _clamped(e)
        if clamp is not None and _proves(atoms, *clamp):
            changed = True
            return rewrite(clamp[0])
        if isinstance(e, Call):
            return Call(e.dtype, e.op, tuple(rewrite(a) for a in e.args), e.attrs)
        return e  # a nested load's index is that load's own business

    result = rewrite(index)
    return result if changed else None


def loop_ranges(*exprs: Expr) -> dict[str, Interval]:
    """The interval of each bounded loop index (``LoopVar``) the expressions use."""
    return {v.name: (0, v.extent - 1) for e in exprs for v in walk(e) if isinstance(v, LoopVar) and v.extent > 0}


def guarded_read(guard: Expr, index: Expr, known: frozenset[Expr] = frozenset()) -> tuple[Expr | None, Expr] | None:
    """For ``where(guard, x[index], pad)`` (lets inlined): the guard still needed (None: always true;
    ``Const(False)``: never) and the index without the clamps that the guard or the loop's range make
    redundant; None when neither changes anything. Terms in ``known`` hold (a versioned loop's test)."""
    env = loop_ranges(guard, index)
    atoms = conjuncts(guard)
    left = [simplify(a, env) for a in atoms]
    if any(isinstance(a, Const) and not a.value for a in left):
        return Const(DType.bool, False), index
    left = [a for a in left if not isinstance(a, Const) and a not in known]
    bounded = simplify(index, env)
    unclamped = unclamped_index(guard, bounded)
    new_index = unclamped if unclamped is not None else bounded
    if len(left) == len(atoms) and new_index == index:
        return None
    remaining = None
    for a in left:
        remaining = a if remaining is None else Call(DType.bool, "logical_and", (remaining, a))
    return remaining, new_index


MAX_VERSIONED_TERMS = 16  # a loop versioned on more guard terms than this stays as it is (a 3x3 window
# over NHWC has 12 invariant in its channel loop: 4 per tap row and column, shared)


def invariant_guard_terms(var: str, body: tuple, lets: dict[str, Expr], known: frozenset[Expr]) -> list[Expr]:
    """The terms of the guards of ``body``'s padded reads (``where(guard, load, pad)``, ``lets`` and the
    body's own followed) that do not depend on loop ``var`` or any loop inside it, not already
    ``known``; empty when there are none or more than ``MAX_VERSIONED_TERMS``."""
    scope = {**lets, **{s.name: s.value for s in body if isinstance(s, Let)}}
    varying = {var} | _loop_vars(body)
    terms: list[Expr] = []
    for expr in body_exprs(body):
        for e in walk(expr):
            if not (isinstance(e, Call) and e.op == "where"):
                continue
            value = inline_lets(e.args[1], scope)
            if not isinstance(value, Load):
                continue
            read = guarded_read(inline_lets(e.args[0], scope), value.index, known)
            guard = inline_lets(e.args[0], scope) if read is None else read[0]
            if guard is None or isinstance(guard, Const):
                continue
            for t in conjuncts(guard):
                names = {v.name for v in walk(t) if isinstance(v, Var)}
                if not names & varying and not any(isinstance(v, Load) for v in walk(t)) and t not in terms:
                    terms.append(t)
    return terms if len(terms) <= MAX_VERSIONED_TERMS else []


def _loop_vars(body: tuple) -> set[str]:
    found: set[str] = set()
    for s in body:
        if isinstance(s, (Loop, Reduce)):
            found |= {s.var} | _loop_vars(s.body)
    return found
