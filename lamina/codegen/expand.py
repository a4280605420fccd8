"""Composite scalar ops spelled as primitive ones, once, so every kernel printer handles only
primitives (arithmetic, comparisons, select, casts, exp/log/sqrt/tanh/erf/sin/cos/floor)."""
from __future__ import annotations

import math

from ..ir.dtypes import DType
from .kernel import Call, Const, Expr


def _c(value: float, dt: DType) -> Const:
    return Const(dt, value)


def _f(op: str, dt: DType, *args: Expr) -> Call:
    return Call(dt, op, tuple(args))


def expand(e: Call) -> Expr:
    """``e`` with a composite op replaced by its primitive formula (other ops unchanged)."""
    op, dt, a = e.op, e.dtype, e.args
    one = _c(1.0, dt)
    if op == "sigmoid":
        return _f("div", dt, one, _f("add", dt, one, _f("exp", dt, _f("neg", dt, a[0]))))
    if op == "silu":
        return _f("mul", dt, a[0], expand(_f("sigmoid", dt, a[0])))
    if op == "gelu":
        x, half = a[0], _c(0.5, dt)
        if e.attr("approximate") == "tanh":
            cube = _f("mul", dt, _f("mul", dt, _f("mul", dt, _c(0.044715, dt), x), x), x)
            inner = _f("mul", dt, _c(math.sqrt(2 / math.pi), dt), _f("add", dt, x, cube))
            return _f("mul", dt, _f("mul", dt, half, x), _f("add", dt, one, _f("tanh", dt, inner)))
        scaled = _f("mul", dt, x, _c(1 / math.sqrt(2.0), dt))
        return _f("mul", dt, _f("mul", dt, half, x), _f("add", dt, one, _f("erf", dt, scaled)))
    if op == "reciprocal":
        return _f("div", dt, one, a[0])
    if op == "rsqrt":
        return _f("div", dt, one, _f("sqrt", dt, a[0]))
    if op == "ceil":  # -floor(-x)
        return _f("neg", dt, _f("floor", dt, _f("neg", dt, a[0])))
    if op == "trunc":
        x = a[0]
        return _f("where", dt, _f("lt", DType.bool, x, Const(dt, 0)), expand(_f("ceil", dt, x)), _f("floor", dt, x))
    if op == "sign":  # 0 for 0 and NaN, as torch
        x = a[0]
        return _f("where", dt, _f("gt", DType.bool, x, Const(dt, 0)), Const(dt, 1),
                  _f("where", dt, _f("lt", DType.bool, x, Const(dt, 0)), Const(dt, -1), Const(dt, 0)))
    if op == "relu":
        return _f("maximum", dt, a[0], Const(dt, 0))
    if op == "clamp":
        x = a[0]
        if e.attr("min") is not None:
            x = _f("maximum", dt, x, Const(dt, e.attr("min")))
        if e.attr("max") is not None:
            x = _f("minimum", dt, x, Const(dt, e.attr("max")))
        return x
    return e
