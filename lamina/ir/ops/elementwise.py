"""Elementwise ops: unary math, binary arithmetic, comparisons, logic, where, cast, clamp."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..dtypes import DType
from ..opdef import AttrSpec, InferenceError, Kind, OpDef, need_float, same_dtype
from ..shapes import broadcast
from ..types import TensorType

_erf = np.vectorize(math.erf, otypes=[np.float64])
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def erf(x: np.ndarray) -> np.ndarray:
    return _erf(x).astype(x.dtype) if x.size else x.copy()


def gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        one = x.dtype.type(1)
        inner = x.dtype.type(_SQRT_2_OVER_PI) * (x + x.dtype.type(0.044715) * x * x * x)
        return x.dtype.type(0.5) * x * (one + np.tanh(inner))
    return x.dtype.type(0.5) * x * (x.dtype.type(1) + erf(x * x.dtype.type(1 / math.sqrt(2.0))))


def sigmoid(x: np.ndarray) -> np.ndarray:
    one = x.dtype.type(1)
    return one / (one + np.exp(-x))


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
    infer = _unary_numeric(name) if numeric else _unary_float(name)
    return OpDef(name, ("x",), infer, lambda a, at: fn(a[0], **at), Kind.ELEMENTWISE, doc, attrs or {})


def _broadcast_types(name: str, types: Sequence[TensorType]) -> tuple:
    try:
        return broadcast(*(t.shape for t in types))
    except ValueError as e:
        raise InferenceError(f"{name}: {e}") from None


def _binary(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], doc: str,
            result: DType | None = None, operand_check: Callable[[str, TensorType], None] | None = None) -> OpDef:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        dtype = same_dtype(name, types)
        if operand_check:
            operand_check(name, types[0])
        return [TensorType(_broadcast_types(name, types), result or dtype)]

    return OpDef(name, ("lhs", "rhs"), infer, lambda a, at: fn(a[0], a[1]), Kind.ELEMENTWISE, doc)


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


def _clamp_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0]
    if attrs["min"] is not None:
        x = np.maximum(x, x.dtype.type(attrs["min"]))
    if attrs["max"] is not None:
        x = np.minimum(x, x.dtype.type(attrs["max"]))
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


def _rsqrt(x: np.ndarray) -> np.ndarray:
    return x.dtype.type(1) / np.sqrt(x)


DEFS = [
    _unary("exp", np.exp, "e ** x"),
    _unary("log", np.log, "natural logarithm"),
    _unary("sqrt", np.sqrt, "square root"),
    _unary("rsqrt", _rsqrt, "1 / sqrt(x)"),
    _unary("tanh", np.tanh, "hyperbolic tangent"),
    _unary("sin", np.sin, "sine"),
    _unary("cos", np.cos, "cosine"),
    _unary("erf", erf, "error function"),
    _unary("sigmoid", sigmoid, "1 / (1 + exp(-x))"),
    _unary("silu", lambda x: x * sigmoid(x), "x * sigmoid(x)"),
    _unary("gelu", gelu, "Gaussian error linear unit, exact (erf) or tanh approximation",
           attrs={"approximate": AttrSpec("str", "none")}),
    _unary("reciprocal", lambda x: x.dtype.type(1) / x, "1 / x"),
    _unary("floor", np.floor, "round toward -inf"),
    _unary("ceil", np.ceil, "round toward +inf"),
    _unary("trunc", np.trunc, "round toward zero"),
    _unary("log1p", np.log1p, "log(1 + x), accurate for small x"),
    _unary("sign", lambda x: np.where(x != x, x.dtype.type(0), np.sign(x)), "-1, 0 or 1 by the sign of x (0 for NaN, "
           "as torch)", numeric=True),
    _unary("relu", lambda x: np.maximum(x, x.dtype.type(0)), "max(x, 0)", numeric=True),
    _unary("neg", np.negative, "-x", numeric=True),
    _unary("abs", np.abs, "|x|", numeric=True),
    OpDef("logical_not", ("x",), lambda t, at: [_checked_bool("logical_not", t[0])],
          lambda a, at: np.logical_not(a[0]), Kind.ELEMENTWISE, "boolean not"),
    OpDef("cast", ("x",), _cast_infer, _cast_ref, Kind.ELEMENTWISE,
          "convert to another dtype (float -> int truncates toward zero)", {"dtype": AttrSpec("dtype")}),
    OpDef("clamp", ("x",), _unary_numeric("clamp"), _clamp_ref, Kind.ELEMENTWISE,
          "limit to [min, max]; either bound may be none", {"min": AttrSpec("float?", None), "max": AttrSpec("float?", None)}),
    _binary("add", np.add, "lhs + rhs"),
    _binary("sub", np.subtract, "lhs - rhs"),
    _binary("mul", np.multiply, "lhs * rhs"),
    _binary("div", _div, "lhs / rhs (true division, floating point)", operand_check=need_float),
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
          Kind.ELEMENTWISE, "cond ? lhs : rhs, broadcast"),
]


def _checked_bool(name: str, t: TensorType) -> TensorType:
    _need_bool(name, t)
    return t
