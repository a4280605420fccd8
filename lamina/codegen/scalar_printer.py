"""What every kernel printer shares: walking a scalar expression, with per-target spellings.

A target gives ``FORMS`` (op -> format string over the printed operands ``{0}``, ``{1}``,
``{2}``), ``literal`` and ``index``; ops that need more than a format (casts, math calls that
depend on the dtype) go in ``special``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..ir.dtypes import DType
from .checked_ops import checked_call
from .kernel import CHECKED, Call, Const, Expr, Load, Var

INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
         "eq": "==", "ne": "!="}


def infix_forms(**extra: str) -> dict[str, str]:
    """``{"add": "({0} + {1})", ...}`` for the common infix ops, plus target-specific ones."""
    forms = {op: f"({{0}} {sym} {{1}})" for op, sym in INFIX.items()}
    forms.update({op: f"({{0}} {sym} {{1}})" for op, sym in extra.items()})
    return forms


# floating-point ops every target computes with a helper of the same name (codegen/checked_ops.py)
HELPERS = {"floor_divide": "lm_floor_divide", "remainder": "lm_remainder", "fmod": "lm_fmod"}


def _small_power(e: Call) -> int:
    """The exponent of ``pow(x, n)`` for a constant n in 2..4 on floats, else 0."""
    if e.op != "pow" or not e.dtype.is_float or not isinstance(e.args[1], Const):
        return 0
    n = float(e.args[1].value)
    return int(n) if n.is_integer() and 2 <= n <= 4 else 0


class ScalarPrinter:
    FORMS: Mapping[str, str] = {}
    target = "this target"

    def literal(self, value: Any, dtype: DType) -> str:
        raise NotImplementedError

    def index(self, e: Expr) -> str:
        return self.expr(e)

    def special(self, e: Call, a: list[str]) -> str | None:
        """The spelling of ops a format string cannot express, else None."""
        return None

    def expr(self, e: Expr) -> str:
        if isinstance(e, Const):
            return self.literal(e.value, e.dtype)
        if isinstance(e, Var):
            return e.name
        if isinstance(e, Load):
            return f"{e.buffer}[{self.index(e.index)}]"
        assert isinstance(e, Call)
        return self.call(e, [self.expr(a) for a in e.args])

    def call(self, e: Call, a: list[str]) -> str:
        power = _small_power(e)
        if power:  # x ** 3 as x * x * x: libm's pow is scalar and slow, and stops vectorization
            return "(" + " * ".join([a[0]] * power) + ")"
        if e.op in CHECKED:
            return checked_call(e.op, a, bool(dict(e.attrs).get("wrap")))
        if e.op in HELPERS:
            return f"{HELPERS[e.op]}({a[0]}, {a[1]})"
        text = self.special(e, a)
        if text is not None:
            return text
        if e.op in self.FORMS:
            return self.FORMS[e.op].format(*a)
        raise NotImplementedError(f"no {self.target} spelling for scalar op {e.op!r}")
