"""Scalar formulas: composite elementwise ops written once, over primitive ones.

An elementwise ``OpDef`` either is a primitive (every target spells it directly: arithmetic,
comparisons, select, casts and a few libm functions) or carries a ``scalar`` formula
``formula(f, *operands, **attrs)`` written with a :class:`ScalarOps` ``f``. The same formula
builds the kernel expression (``codegen/lower.py``), the MLIR body (``ir/mlir_lowering.py``)
and, evaluated with NumPy, the op's reference; a formula may use other composites
(``silu`` calls ``f.sigmoid``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .dtypes import DType

COMPARISONS = frozenset({"eq", "ne", "lt", "le", "gt", "ge"})
LOGICAL = frozenset({"logical_and", "logical_or", "logical_xor", "logical_not"})
PRIMITIVES = frozenset({
    "add", "sub", "mul", "div", "pow", "neg", "abs", "maximum", "minimum", "where", "cast",
    "floor_divide", "remainder", "fmod", "exp", "log", "log1p", "sqrt", "tanh", "sin", "cos", "erf", "floor",
}) | COMPARISONS | LOGICAL


class ScalarOps:
    """Builds scalar expressions for one target: ``f.add(a, b)``, ``f.const(0.5)``, ``f.sigmoid(x)``.

    ``call(op, args, attrs)`` builds a primitive; ``const(value)`` a constant of the formula's
    dtype. Composites expand through their own formulas, so a target needs only the primitives."""

    def __init__(self, call: Callable[[str, Sequence[Any], dict[str, Any]], Any], const: Callable[[Any], Any]) -> None:
        self._call, self.const = call, const

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in PRIMITIVES:
            return lambda *args, **attrs: self._call(name, args, attrs)
        from .ops import lookup  # the registry imports this module

        formula = lookup(name).scalar
        if formula is None:
            raise AttributeError(f"op {name} is neither a scalar primitive nor has a scalar formula")
        return lambda *args, **attrs: formula(self, *args, **attrs)


def result_dtype(op: str, operand_dtype: DType, attrs: dict[str, Any]) -> DType:
    """The dtype a primitive gives for operands of ``operand_dtype`` (comparisons and logic give bool,
    a cast its ``dtype`` attribute)."""
    if op == "cast":
        return attrs["dtype"]
    return DType.bool if op in COMPARISONS or op in LOGICAL else operand_dtype


def numpy_ops(dtype: np.dtype) -> ScalarOps:
    """ScalarOps over NumPy arrays: the primitives' own references, constants of ``dtype``."""
    from .ops import lookup

    def call(op: str, args: Sequence[Any], attrs: dict[str, Any]) -> Any:
        return lookup(op).reference(list(args), attrs)

    return ScalarOps(call, lambda value: dtype.type(value))


def reference_of(formula: Callable[..., Any]) -> Callable[[Sequence[np.ndarray], Any], np.ndarray]:
    """An OpDef reference that evaluates ``formula`` with NumPy in the first operand's dtype."""
    def reference(arrays: Sequence[np.ndarray], attrs: Any) -> np.ndarray:
        x = np.asarray(arrays[0])
        with np.errstate(all="ignore"):
            return np.asarray(formula(numpy_ops(x.dtype), *arrays, **dict(attrs))).astype(x.dtype)

    return reference
