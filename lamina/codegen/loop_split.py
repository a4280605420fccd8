"""Index-set splitting: a loop whose body compares its index with constants runs as one loop per
range where every such comparison has one value (CPU kernels).

A concat along the last dim reads piece ``k`` where ``j`` lies in its range:
``where(j < 32, -x[... 32 + clamp(j)], x[... clamp(j - 32)])``. Run per element, that loads both
pieces through clamped indices and selects; LLVM cannot see that the loads are consecutive, so
the loop stays scalar (rotary embeddings' ``cat(-x2, x1)`` took 45 us where 5 suffice). Split at
``j = 32``, each loop's comparison is a constant, its select picks one branch, the clamps vanish
(the index is known to lie inside them), and the other piece's loads are dead: two plain loops
that vectorize.

The rewrite reasons with integer intervals only: a comparison, ``min``/``max`` or ``where`` is
replaced only when the interval of ``j`` decides it, so each piece computes exactly what the
original loop computed at those ``j``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from ..ir.dtypes import DType
from .kernel import Call, Const, Expr, Let, Load, Loop, Store, Var, body_exprs, walk

MAX_PIECES = 8  # each piece is a copy of the body: bound the code (and compile time) it adds
Interval = tuple[float, float]  # inclusive; -inf/inf: unknown
_UNKNOWN: Interval = (-math.inf, math.inf)
_COMPARE = {"lt", "le", "gt", "ge"}
_MIRROR = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}


def split_points(loop: Loop, affine: bool = False) -> list[int]:
    """Where the loop's index crosses a constant it is compared with (strictly inside the range);
    empty when the loop should stay whole. With ``affine``, also where ``a * j + b`` (the body's lets
    followed) crosses one: a padded window's edges, ``2 * j + 2 < 112``."""
    if not isinstance(loop.extent, Const):
        return []
    n = int(loop.extent.value)
    points: set[int] = set()
    lets = {s.name: s.value for s in loop.body if isinstance(s, Let)} if affine else {}
    for expr in body_exprs(loop.body):
        for e in walk(expr):
            flip = _flip_point(e, loop.var) if not affine else _affine_flip_point(e, loop.var, lets)
            if flip is not None and 0 < flip < n:
                points.add(flip)
    return sorted(points) if 0 < len(points) < MAX_PIECES else []


def pieces(loop: Loop, affine: bool = False) -> list[tuple[int, int, tuple]]:
    """``(start, stop, body)`` for each range of the split loop, the body simplified for it."""
    bounds = [0, *split_points(loop, affine), int(loop.extent.value)]  # type: ignore[union-attr]
    return [(a, b, specialize(loop.body, loop.var, a, b - 1)) for a, b in zip(bounds, bounds[1:])]


def _flip_point(e: Expr, var: str) -> int | None:
    """For ``var < c`` (and <=, >, >=, either side): the first value where the result changes."""
    if not isinstance(e, Call) or e.op not in _COMPARE:
        return None
    a, b = e.args
    op = e.op
    if isinstance(b, Var) and b.name == var:
        a, b, op = b, a, _MIRROR[op]
    if not (isinstance(a, Var) and a.name == var and isinstance(b, Const) and not b.dtype.is_float):
        return None
    c = int(b.value)
    return c if op in ("lt", "ge") else c + 1


def _affine_flip_point(e: Expr, var: str, lets: dict[str, Expr]) -> int | None:
    """For ``a * var + b < c`` (and <=, >, >=, either side; ``a`` > 0, lets followed): the first value of
    ``var`` where the result changes."""
    if not isinstance(e, Call) or e.op not in _COMPARE or e.args[0].dtype.is_float:
        return None
    left, right = (_affine(x, var, lets) for x in e.args)
    if left is None or right is None:
        return None
    a, b = left[0] - right[0], right[1] - left[1]  # a * var  op  b
    op = e.op
    if a < 0:
        a, b, op = -a, -b, _MIRROR[op]
    if a == 0:
        return None
    if op in ("lt", "ge"):  # a * var < b  holds below ceil(b / a)
        return -(-b // a)
    return b // a + 1  # a * var <= b  holds up to floor(b / a)


def _affine(e: Expr, var: str, lets: dict[str, Expr], depth: int = 0) -> tuple[int, int] | None:
    """``(a, b)`` with ``e == a * var + b`` (integers), or None."""
    if depth > 32:
        return None
    if isinstance(e, Const) and not e.dtype.is_float and e.dtype is not DType.bool:
        return 0, int(e.value)
    if isinstance(e, Var):
        if e.name == var:
            return 1, 0
        return _affine(lets[e.name], var, lets, depth + 1) if e.name in lets else None
    if isinstance(e, Call) and e.op in ("add", "sub", "mul") and len(e.args) == 2:
        x, y = (_affine(a, var, lets, depth + 1) for a in e.args)
        if x is None or y is None:
            return None
        if e.op == "add":
            return x[0] + y[0], x[1] + y[1]
        if e.op == "sub":
            return x[0] - y[0], x[1] - y[1]
        if x[0] and y[0]:
            return None
        return x[0] * y[1] + y[0] * x[1], x[1] * y[1]
    return None


def specialize(body: tuple, var: str, lo: int, hi: int) -> tuple:
    """``body`` for ``var`` in ``[lo, hi]``: decided comparisons, selects and clamps folded, and the
    lets nothing reads any more dropped."""
    env: dict[str, Interval] = {var: (lo, hi)}
    known: dict[str, Const] = {}  # lets that folded to a constant (a decided comparison): read as one
    out: list = []
    for s in body:
        if isinstance(s, Let):
            value, interval = _simplify(_substitute(s.value, known), env)
            env[s.name] = interval
            if isinstance(value, Const):
                known[s.name] = value
            out.append(Let(s.name, value))
        elif isinstance(s, Store):
            out.append(Store(s.buffer, _simplify(_substitute(s.index, known), env)[0],
                             _simplify(_substitute(s.value, known), env)[0]))
        else:  # a nested loop or reduction: kept as it is
            out.append(s)
    return _drop_dead_lets(tuple(out))


def _substitute(e: Expr, known: dict[str, Const]) -> Expr:
    if isinstance(e, Var):
        return known.get(e.name, e)
    if isinstance(e, Load):
        return Load(e.dtype, e.buffer, _substitute(e.index, known))
    if isinstance(e, Call):
        return Call(e.dtype, e.op, tuple(_substitute(a, known) for a in e.args), e.attrs)
    return e


def simplify(e: Expr, env: dict[str, Interval]) -> Expr:
    """``e`` with every comparison, ``min``/``max`` and ``where`` that the integer intervals ``env`` of its
    variables decide replaced by its value (exact wherever the variables lie in their intervals)."""
    return _simplify(e, env)[0]


def _simplify(e: Expr, env: dict[str, Interval]) -> tuple[Expr, Interval]:
    if isinstance(e, Const):
        return e, ((e.value, e.value) if not e.dtype.is_float and e.dtype is not DType.bool else _UNKNOWN)
    if isinstance(e, Var):
        return e, env.get(e.name, _UNKNOWN) if not e.dtype.is_float else _UNKNOWN
    if isinstance(e, Load):
        return Load(e.dtype, e.buffer, _simplify(e.index, env)[0]), _UNKNOWN
    assert isinstance(e, Call)
    if e.op == "where":
        cond, _ = _simplify(e.args[0], env)
        if isinstance(cond, Const):
            return _simplify(e.args[1] if cond.value else e.args[2], env)
        args = (cond, _simplify(e.args[1], env)[0], _simplify(e.args[2], env)[0])
        return Call(e.dtype, e.op, args, e.attrs), _UNKNOWN
    simplified = [_simplify(a, env) for a in e.args]
    args = tuple(a for a, _ in simplified)
    ranges = [r for _, r in simplified]
    if e.op in _COMPARE and not e.args[0].dtype.is_float:
        decided = _decide(e.op, *ranges)
        if decided is not None:
            return Const(DType.bool, decided), _UNKNOWN
    if e.op in ("min", "max"):
        (alo, ahi), (blo, bhi) = ranges
        if ahi <= blo:
            return (args[0], ranges[0]) if e.op == "min" else (args[1], ranges[1])
        if bhi <= alo:
            return (args[1], ranges[1]) if e.op == "min" else (args[0], ranges[0])
        pick = min if e.op == "min" else max
        return Call(e.dtype, e.op, args, e.attrs), (pick(alo, blo), pick(ahi, bhi))
    return Call(e.dtype, e.op, args, e.attrs), _arithmetic(e.op, ranges) if not e.dtype.is_float else _UNKNOWN


def _decide(op: str, a: Interval, b: Interval) -> bool | None:
    (alo, ahi), (blo, bhi) = a, b
    always, never = {"lt": (ahi < blo, alo >= bhi), "le": (ahi <= blo, alo > bhi),
                     "gt": (alo > bhi, ahi <= blo), "ge": (alo >= bhi, ahi < blo)}[op]
    return True if always else False if never else None


def _arithmetic(op: str, ranges: list[Interval]) -> Interval:
    if len(ranges) != 2 or any(math.isinf(x) for r in ranges for x in r):
        return _UNKNOWN
    (alo, ahi), (blo, bhi) = ranges
    if op == "add":
        return alo + blo, ahi + bhi
    if op == "sub":
        return alo - bhi, ahi - blo
    if op == "mul":
        products = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]
        return min(products), max(products)
    return _UNKNOWN


def _drop_dead_lets(body: tuple) -> tuple:
    live: set[str] = set()
    kept: list = []
    for s in reversed(body):
        if isinstance(s, Let) and s.name not in live:
            continue
        kept.append(s)
        live |= _names(body_exprs((s,)))
    return tuple(reversed(kept))


def _names(exprs: Iterable[Expr]) -> set[str]:
    return {e.name for x in exprs for e in walk(x) if isinstance(e, Var)}

