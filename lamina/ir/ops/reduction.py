"""Reductions and scans: sum, mean, amax, amin, argmax, var, cumsum, softmax, log_softmax."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..dtypes import DType
from ..opdef import AttrSpec, InferenceError, Category, OpDef, axes, need_float
from ..types import TensorType

_REDUCE_ATTRS = {"dims": AttrSpec("ints"), "keepdim": AttrSpec("bool", False)}


def reduced_shape(name: str, t: TensorType, dims: Sequence[int], keepdim: bool) -> tuple:
    """Shape after reducing ``dims`` (an empty list means every axis)."""
    picked = axes(name, dims, t.rank) if dims else tuple(range(t.rank))
    if keepdim:
        return tuple(1 if i in picked else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in picked)


def _np_axes(x: np.ndarray, dims: Sequence[int]) -> tuple[int, ...]:
    return tuple(d % x.ndim for d in dims) if dims else tuple(range(x.ndim))


def dims_reduced(rank: int, attrs: Mapping[str, Any]) -> tuple[int, ...]:
    """The axes named by a ``dims`` attribute (every axis when empty)."""
    dims = attrs["dims"]
    return tuple(sorted(d % max(rank, 1) for d in dims)) if dims else tuple(range(rank))


def dim_reduced(rank: int, attrs: Mapping[str, Any]) -> tuple[int, ...]:
    """The one axis named by a ``dim`` attribute (softmax and friends)."""
    return (attrs["dim"] % max(rank, 1),)


def _reduction(name: str, fn: Any, doc: str, floats_only: bool = False) -> OpDef:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        if floats_only:
            need_float(name, types[0])
        return [types[0].with_shape(reduced_shape(name, types[0], attrs["dims"], attrs["keepdim"]))]

    def ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
        return fn(a[0], axis=_np_axes(a[0], attrs["dims"]), keepdims=attrs["keepdim"])

    return OpDef(name, ("x",), infer, ref, Category.REDUCTION, doc, _REDUCE_ATTRS, reduces=dims_reduced)


def _var_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    need_float("var", types[0])
    return [types[0].with_shape(reduced_shape("var", types[0], attrs["dims"], attrs["keepdim"]))]


def _var_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0]
    return np.var(x, axis=_np_axes(x, attrs["dims"]), ddof=attrs["correction"], keepdims=attrs["keepdim"])


def _argmax_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    t = types[0]
    shape = reduced_shape("argmax", t, [attrs["dim"]], attrs["keepdim"])
    return [TensorType(shape, DType.i64)]


def _argmax_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    return np.argmax(a[0], axis=attrs["dim"], keepdims=attrs["keepdim"])


def _along_dim_infer(name: str, floats_only: bool) -> Any:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        if floats_only:
            need_float(name, types[0])
        axes(name, [attrs["dim"]], types[0].rank)
        return [types[0]]

    return infer


def softmax(x: np.ndarray, dim: int) -> np.ndarray:
    if x.size == 0:
        return x.copy()
    shifted = x - np.max(x, axis=dim, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=dim, keepdims=True)


def log_softmax(x: np.ndarray, dim: int) -> np.ndarray:
    if x.size == 0:
        return x.copy()
    shifted = x - np.max(x, axis=dim, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))


def _layer_scan_counts(pattern: Sequence[int], groups: int) -> list[int]:
    if any(not 0 <= g < groups for g in pattern):
        raise InferenceError(f"layer_scan: pattern {list(pattern)} names a delta operand outside 0..{groups - 1}")
    return [sum(1 for g in pattern if g == b) for b in range(groups)]


def _layer_scan_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    base, deltas = types[0], types[1:]
    if not deltas:
        raise InferenceError("layer_scan needs at least one deltas operand")
    counts = _layer_scan_counts(attrs["pattern"], len(deltas))
    for b, (t, n) in enumerate(zip(deltas, counts)):
        if t.dtype != base.dtype or t.shape[1:] != base.shape or t.rank != base.rank + 1 or t.shape[0] != n:
            raise InferenceError(f"layer_scan: deltas operand {b} is {t}; the pattern gives it {n} layers of {base}")
    return [TensorType((len(attrs["pattern"]) + 1,) + base.shape, base.dtype)]


def layer_scan(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    """out[0] = base; out[j + 1] = out[j] + the next row of deltas operand pattern[j] (in the base's dtype)."""
    base, deltas = a[0], a[1:]
    rows, used = [base], [0] * len(deltas)
    for g in attrs["pattern"]:
        rows.append((rows[-1] + deltas[g][used[g]]).astype(base.dtype))
        used[g] += 1
    return np.stack(rows)


DEFS = [
    _reduction("sum", np.sum, "sum over dims (all dims when empty)"),
    _reduction("mean", np.mean, "mean over dims", floats_only=True),
    _reduction("amax", np.max, "maximum over dims"),
    _reduction("amin", np.min, "minimum over dims"),
    OpDef("var", ("x",), _var_infer, _var_ref, Category.REDUCTION, "sum of squared deviations / max(count - correction, 0)",
          {"dims": AttrSpec("ints"), "correction": AttrSpec("float", 1), "keepdim": AttrSpec("bool", False)}, reduces=dims_reduced),
    OpDef("argmax", ("x",), _argmax_infer, _argmax_ref, Category.LIBRARY, "index of the first maximum along dim",
          {"dim": AttrSpec("int"), "keepdim": AttrSpec("bool", False)}),
    OpDef("cumsum", ("x",), _along_dim_infer("cumsum", False), lambda a, at: np.cumsum(a[0], axis=at["dim"]),
          Category.LIBRARY, "inclusive prefix sum along dim", {"dim": AttrSpec("int")}),
    OpDef("layer_scan", ("base", "*deltas"), _layer_scan_infer, layer_scan, Category.SCAN,
          "the prefix sum of a Newton step over the layer axis: out[0] = base, out[j+1] = out[j] + layer j's delta, "
          "layer j's delta being the next row of deltas operand pattern[j]", {"pattern": AttrSpec("ints")}),
    OpDef("softmax", ("x",), _along_dim_infer("softmax", True), lambda a, at: softmax(a[0], at["dim"]),
          Category.REDUCTION, "exp(x) / sum(exp(x)) along dim", {"dim": AttrSpec("int")},
          reduces=dim_reduced),
    OpDef("log_softmax", ("x",), _along_dim_infer("log_softmax", True), lambda a, at: log_softmax(a[0], at["dim"]),
          Category.REDUCTION, "log of softmax along dim", {"dim": AttrSpec("int")},
          reduces=dim_reduced),
]
