"""Elementwise ops: unary math, binary arithmetic, comparisons, logic, where, cast, clamp."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..dtypes import DType
from ..opdef import AttrSpec, Category, InferenceError, Neutral, OpDef, need_float, same_dtype
from ..scalar import ScalarOps, reference_of
from ..shapes import broadcast
from ..types import TensorType

_erf = np.vectorize(math.erf, otypes=[np.float64])


def erf(x: np.ndarray) -> np.ndarray:
    return _erf(x).astype(x.dtype) if x.size else x.copy()


# ---- scalar formulas of the composite ops (see lamina/ir/scalar.py) ----------------------

def _sigmoid(f: ScalarOps, x: Any) -> Any:
    one = f.const(1.0)
    return f.div(one, f.add(one, f.exp(f.neg(x))))


def _silu(f: ScalarOps, x: Any) -> Any:
    return f.mul(x, f.sigmoid(x))


def _gelu(f: ScalarOps, x: Any, approximate: str) -> Any:
    half, one = f.const(0.5), f.const(1.0)
    if approximate == "tanh":
        cube = f.mul(f.mul(f.mul(f.const(0.044715), x), x), x)
        inner = f.mul(f.const(math.sqrt(2 / math.pi)), f.add(x, cube))
        return f.mul(f.mul(half, x), f.add(one, f.tanh(inner)))
    return f.mul(f.mul(half, x), f.add(one, f.erf(f.mul(x, f.const(1 / math.sqrt(2.0))))))


def _sign(f: ScalarOps, x: Any) -> Any:  # 0 for 0 and NaN, as torch
    zero = f.const(0)
    return f.where(f.gt(x, zero), f.const(1), f.where(f.lt(x, zero), f.const(-1), zero))


def _trunc(f: ScalarOps, x: Any) -> Any:
    return f.where(f.lt(x, f.const(0)), f.ceil(x), f.floor(x))


def _hardswish(f: ScalarOps, x: Any) -> Any:
    relu6 = f.minimum(f.maximum(f.add(x, f.const(3.0)), f.const(0.0)), f.const(6.0))
    return f.div(f.mul(x, relu6), f.const(6.0))


def _clamp(f: ScalarOps, x: Any, min: float | None, max: float | None) -> Any:  # noqa: A002 - the attribute names
    if min is not None:
        x = f.maximum(x, f.const(min))
    if max is not None:
        x = f.minimum(x, f.const(max))
    return x


def _unary_float(name: str) -> Callable[[Sequence[TensorType], Mapping[str, Any]], list[TensorType]]:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        need_float(name, types[0])
        return [types[0]]

    return infer


def _unary_numeric(name: str) -> Callable[[Sequence[TensorType], Mapping[str, Any]], list[TensorType]]:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        if types[0].dtype is DType.bool:
            raise InferenceError(f"{name} needs a numeric operand, got {types[0]}")
        return [types[0]]

    return infer


def _unary(name: str, fn: Callable[..., np.ndarray], doc: str, numeric: bool = False,
           attrs: Mapping[str, AttrSpec] | None = None) -> OpDef:
    """A primitive unary op with NumPy function ``fn``."""
    infer = _unary_numeric(name) if numeric else _unary_float(name)
    return OpDef(name, ("x",), infer, lambda a, at: fn(a[0], **at), Category.ELEMENTWISE, doc, attrs or {})


def _composite(name: str, formula: Callable[..., Any], doc: str, numeric: bool = False,
               attrs: Mapping[str, AttrSpec] | None = None) -> OpDef:
    """A unary op defined by its scalar formula; the reference evaluates the formula with NumPy."""
    infer = _unary_numeric(name) if numeric else _unary_float(name)
    return OpDef(name, ("x",), infer, reference_of(formula), Category.ELEMENTWISE, doc, attrs or {}, scalar=formula)


def _broadcast_types(name: str, types: Sequence[TensorType]) -> tuple:
    try:
        return broadcast(*(t.shape for t in types))
    except ValueError as e:
        raise InferenceError(f"{name}: {e}") from None


def _binary(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], doc: str,
            result: DType | None = None, operand_check: Callable[[str, TensorType], None] | None = None,
            neutral: Neutral | None = None) -> OpDef:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        dtype = same_dtype(name, types)
        if operand_check:
            operand_check(name, types[0])
        return [TensorType(_broadcast_types(name, types), result or dtype)]

    return OpDef(name, ("lhs", "rhs"), infer, lambda a, at: fn(a[0], a[1]), Category.ELEMENTWISE, doc, neutral=neutral)


def _need_bool(name: str, t: TensorType) -> None:
    if t.dtype is not DType.bool:
        raise InferenceError(f"{name} needs bool operands, got {t}")


def _not_bool(name: str, t: TensorType) -> None:
    if t.dtype is DType.bool:
        raise InferenceError(f"{name} needs numeric operands, got {t}; cast bools first")


def _where_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    cond, a, b = types
    _need_bool("where", cond)
    dtype = same_dtype("where", (a, b))
    return [TensorType(_broadcast_types("where", types), dtype)]


def _cast_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [types[0].with_dtype(attrs["dtype"])]


def _cast_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x, dtype = a[0], attrs["dtype"]
    if x.dtype.kind == "f" and dtype.is_int:
        return np.trunc(x)  # torch truncates toward zero; the interpreter stores the integer type
    return x


def _pow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.power(x, y)


def _div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.true_divide(x, y).astype(x.dtype)


def _integer_division(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    """``fn`` with torch's rule for integers: a zero divisor is an error (floats give inf/nan)."""
    def divide(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if x.dtype.kind in "iu" and np.any(y == 0):
            raise ZeroDivisionError("integer division by zero")
        with np.errstate(divide="ignore", invalid="ignore"):
            return fn(x, y).astype(x.dtype)

    return divide


DEFS = [
    _unary("exp", np.exp, "e ** x"),
    _unary("log", np.log, "natural logarithm"),
    _unary("sqrt", np.sqrt, "square root"),
    _composite("rsqrt", lambda f, x: f.div(f.const(1.0), f.sqrt(x)), "1 / sqrt(x)"),
    _unary("tanh", np.tanh, "hyperbolic tangent"),
    _unary("sin", np.sin, "sine"),
    _unary("cos", np.cos, "cosine"),
    _unary("erf", erf, "error function"),
    _composite("sigmoid", _sigmoid, "1 / (1 + exp(-x))"),
    _composite("silu", _silu, "x * sigmoid(x)"),
    _composite("hardswish", _hardswish, "x * relu6(x + 3) / 6 (MobileNetV3's activation)"),
    _composite("gelu", _gelu, "Gaussian error linear unit, exact (erf) or tanh approximation",
               attrs={"approximate": AttrSpec("str", "none")}),
    _composite("reciprocal", lambda f, x: f.div(f.const(1.0), x), "1 / x"),
    _unary("floor", np.floor, "round toward -inf"),
    _composite("ceil", lambda f, x: f.neg(f.floor(f.neg(x))), "round toward +inf"),
    _composite("trunc", _trunc, "round toward zero"),
    _unary("log1p", np.log1p, "log(1 + x), accurate for small x"),
    _composite("sign", _sign, "-1, 0 or 1 by the sign of x (0 for NaN, as torch)", numeric=True),
    _composite("relu", lambda f, x: f.maximum(x, f.const(0)), "max(x, 0)", numeric=True),
    _composite("copy", lambda f, x: x, "x in memory of its own: a view of weights read once per plan into a "
               "dense tensor (channels-last's depthwise taps)", numeric=True),
    _unary("neg", np.negative, "-x", numeric=True),
    _unary("abs", np.abs, "|x|", numeric=True),
    OpDef("logical_not", ("x",), lambda t, at: [_checked_bool("logical_not", t[0])],
          lambda a, at: np.logical_not(a[0]), Category.ELEMENTWISE, "boolean not"),
    OpDef("cast", ("x",), _cast_infer, _cast_ref, Category.ELEMENTWISE,
          "convert to another dtype (float -> int truncates toward zero)", {"dtype": AttrSpec("dtype")}),
    _composite("clamp", _clamp, "limit to [min, max]; either bound may be none", numeric=True,
               attrs={"min": AttrSpec("float?", None), "max": AttrSpec("float?", None)}),
    _binary("add", np.add, "lhs + rhs", neutral=Neutral(0)),
    _binary("sub", np.subtract, "lhs - rhs", neutral=Neutral(0, commutes=False)),
    _binary("mul", np.multiply, "lhs * rhs", neutral=Neutral(1)),
    _binary("div", _div, "lhs / rhs (true division, floating point)", operand_check=need_float,
            neutral=Neutral(1, commutes=False)),
    _binary("pow", _pow, "lhs ** rhs", operand_check=_not_bool),
    _binary("floor_divide", _integer_division(np.floor_divide), "floor(lhs / rhs); integer division by zero is an error",
            operand_check=_not_bool),
    _binary("remainder", _integer_division(np.remainder), "lhs - floor(lhs / rhs) * rhs (sign of rhs, Python's %)",
            operand_check=_not_bool),
    _binary("fmod", _integer_division(np.fmod), "lhs - trunc(lhs / rhs) * rhs (sign of lhs, C's fmod)",
            operand_check=_not_bool),
    _binary("maximum", np.maximum, "elementwise max (NaN-propagating)"),
    _binary("minimum", np.minimum, "elementwise min (NaN-propagating)"),
    _binary("eq", np.equal, "lhs == rhs", result=DType.bool),
    _binary("ne", np.not_equal, "lhs != rhs", result=DType.bool),
    _binary("lt", np.less, "lhs < rhs", result=DType.bool),
    _binary("le", np.less_equal, "lhs <= rhs", result=DType.bool),
    _binary("gt", np.greater, "lhs > rhs", result=DType.bool),
    _binary("ge", np.greater_equal, "lhs >= rhs", result=DType.bool),
    _binary("logical_and", np.logical_and, "boolean and", operand_check=_need_bool),
    _binary("logical_or", np.logical_or, "boolean or", operand_check=_need_bool),
    _binary("logical_xor", np.logical_xor, "boolean xor", operand_check=_need_bool),
    OpDef("where", ("cond", "lhs", "rhs"), _where_infer, lambda a, at: np.where(a[0], a[1], a[2]),
          Category.ELEMENTWISE, "cond ? lhs : rhs, broadcast"),
]


def _checked_bool(name: str, t: TensorType) -> TensorType:
    _need_bool(name, t)
    return t
