"""A loop over a flattened 2-d range, run as two nested loops (C kernels).

A row kernel reducing over H x W (a mean after a convolution) loops over ``r`` in ``[0, H*W)`` and
indexes with ``r // W`` and ``r % W``. gcc vectorizes no 64-bit division, so that loop runs scalar
(EfficientNet's depthwise-convolution-plus-mean kernels, 4x slower than Numba's, whose LLVM copes).
``nested`` rewrites it as ``for rh in [0, H): for rl in [0, W):`` with ``r // W`` read as ``rh``,
``r % W`` as ``rl`` and any other use of ``r`` as ``rh * W + rl``: the same values at every
iteration, and an inner loop of affine indices.
"""
from __future__ import annotations

from ..ir.dtypes import DType
from .kernel import Call, Const, Expr, Let, Load, Loop, LoopVar, Reduce, Store, Var, add, body_exprs, const, map_body, mul, walk

MIN_INNER = 8  # an inner loop shorter than this is not worth a loop of its own


def row_divisor(loop: Loop) -> int | None:
    """The constant ``W`` the loop's index is divided by (``floordiv``/``mod``), when there is exactly one,
    the extent is a static multiple of it, and both loops would have more than one iteration."""
    if not isinstance(loop.extent, Const):
        return None
    divisors = {int(e.args[1].value) for x in body_exprs(loop.body) for e in walk(x) if _divides(e, loop.var)}
    if len(divisors) != 1:
        return None
    (w,) = divisors
    n = int(loop.extent.value)
    return w if MIN_INNER <= w < n and n % w == 0 else None


def nested(loop: Loop) -> Loop | None:
    """``loop`` as two nested loops (see the module doc), or None when ``row_divisor`` finds no split."""
    w = row_divisor(loop)
    if w is None:
        return None
    n = int(loop.extent.value)  # type: ignore[union-attr]
    hi, lo = LoopVar(DType.i64, f"{loop.var}_hi", n // w), LoopVar(DType.i64, f"{loop.var}_lo", w)
    flat = add(mul(hi, const(w)), lo)

    def rewrite(e: Expr) -> Expr:
        if _divides(e, loop.var):
            return hi if e.op == "floordiv" else lo  # type: ignore[union-attr]
        if isinstance(e, Var) and e.name == loop.var:
            return flat
        if isinstance(e, Call):
            return Call(e.dtype, e.op, tuple(rewrite(a) for a in e.args), e.attrs)
        if isinstance(e, Load):
            return Load(e.dtype, e.buffer, rewrite(e.index))
        return e

    hoisted, inner = _hoist(map_body(loop.body, rewrite), lo.name)
    return Loop(hi.name, const(n // w), (*hoisted, Loop(lo.name, const(w), inner)))


def _hoist(body: tuple, inner_var: str) -> tuple[tuple, tuple]:
    """(the lets that depend neither on ``inner_var`` nor on lets that do, and read no buffer the body
    writes; the rest): a row's values, computed once per row. Lets are pure, so their order is kept."""
    written = {s.buffer for s in _stores(body)}
    varying = {inner_var}
    hoisted, rest = [], []
    for s in body:
        if isinstance(s, Let):
            names = {v.name for v in walk(s.value) if isinstance(v, Var)}
            reads = {e.buffer for e in walk(s.value) if isinstance(e, Load)}
            if not names & varying and not reads & written:
                hoisted.append(s)
                continue
            varying.add(s.name)
        elif isinstance(s, Reduce):
            varying.add(s.acc)  # what the inner loop accumulates
        rest.append(s)
    return tuple(hoisted), tuple(rest)


def _stores(body: tuple):
    for s in body:
        if isinstance(s, Store):
            yield s
        elif isinstance(s, (Loop, Reduce)):
            yield from _stores(s.body)


def _divides(e: Expr, var: str) -> bool:
    return (isinstance(e, Call) and e.op in ("floordiv", "mod") and isinstance(e.args[0], Var)
            and e.args[0].name == var and isinstance(e.args[1], Const) and int(e.args[1].value) > 1)
