"""Ops whose result depends on comparing or counting values: topk, sort, histc, index_put.

They run as library calls (torch's kernels): their output positions depend on the data, so no
per-element index formula exists for a generated kernel. Mixture-of-experts routing uses them all.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..dtypes import DType
from ..opdef import AttrSpec, InferenceError, Category, OpDef, axes, need_float, same_dtype
from ..shapes import broadcast
from ..types import TensorType


def _topk_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = types[0]
    (d,) = axes("topk", [attrs["dim"]], max(x.rank, 1))
    k = attrs["k"]
    if x.rank and isinstance(x.shape[d], int) and not 0 <= k <= x.shape[d]:
        raise InferenceError(f"topk: k={k} is out of range for dim {d} of {x}")
    shape = x.shape[:d] + (k,) + x.shape[d + 1:] if x.rank else ()
    return [x.with_shape(shape), TensorType(shape, DType.i64)]


def _order(x: np.ndarray, d: int, descending: bool) -> np.ndarray:
    """Stable order along ``d``; descending keeps equal values in their original order, as torch."""
    if not descending:
        return np.argsort(x, axis=d, kind="stable")
    flipped = np.flip(x, axis=d)
    order = np.flip(np.argsort(flipped, axis=d, kind="stable"), axis=d)
    return x.shape[d] - 1 - order


def _topk_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    x = a[0]
    d = attrs["dim"] % max(x.ndim, 1)
    order = np.take(_order(x, d, attrs["largest"]), np.arange(attrs["k"]), axis=d)
    return np.take_along_axis(x, order, axis=d), order.astype(np.int64)


def _sort_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = types[0]
    axes("sort", [attrs["dim"]], max(x.rank, 1))
    return [x, x.with_dtype(DType.i64)]


def _sort_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    x = a[0]
    d = attrs["dim"] % max(x.ndim, 1)
    order = _order(x, d, attrs["descending"])
    return np.take_along_axis(x, order, axis=d), order.astype(np.int64)


def _histc_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    need_float("histc", types[0])
    if attrs["bins"] < 1:
        raise InferenceError(f"histc: bins must be positive, got {attrs['bins']}")
    return [TensorType((attrs["bins"],), types[0].dtype)]


def _histc_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0].reshape(-1)
    low, high = attrs["min"], attrs["max"]
    if low == high and x.size:
        low, high = float(x.min()), float(x.max())
    if low == high:
        low, high = low - 1, high + 1
    inside = x[(x >= low) & (x <= high)]
    bins = attrs["bins"]
    index = np.minimum(((inside - low) * bins / (high - low)).astype(np.int64), bins - 1)
    return np.bincount(index, minlength=bins).astype(a[0].dtype)


def _index_put_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    """values must broadcast to x[indices] (the shape the ``index`` op would read)."""
    from .layout import _index_infer

    x, values, indices = types[0], types[1], types[2:]
    same_dtype("index_put", (x, values))
    (picked,) = _index_infer([x, *indices], attrs)
    try:
        if broadcast(values.shape, picked.shape) != tuple(picked.shape):
            raise ValueError(f"values {values} do not broadcast to the indexed {picked}")
    except ValueError as e:
        raise InferenceError(f"index_put: {e}") from None
    return [x]


def _index_put_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    from .layout import _in_range

    out = a[0].copy()
    key: list[Any] = [slice(None)] * out.ndim
    for pos, idx in zip(attrs["positions"], a[2:]):
        key[pos % out.ndim] = _in_range("index_put", idx, out.shape[pos % out.ndim], wrap=True)
    if attrs["accumulate"]:
        np.add.at(out, tuple(key), a[1])
    else:
        out[tuple(key)] = a[1]
    return out


DEFS = [
    OpDef("topk", ("x",), _topk_infer, _topk_ref, Category.LIBRARY,
          "the k largest (or smallest) values along dim and their indices, in order",
          {"k": AttrSpec("int"), "dim": AttrSpec("int", -1), "largest": AttrSpec("bool", True),
           "sorted": AttrSpec("bool", True)}),
    OpDef("sort", ("x",), _sort_infer, _sort_ref, Category.LIBRARY,
          "values along dim in order and their original indices (stable: ties keep their order)",
          {"dim": AttrSpec("int", -1), "descending": AttrSpec("bool", False)}),
    OpDef("histc", ("x",), _histc_infer, _histc_ref, Category.LIBRARY,
          "counts of x in bins equal-width bins over [min, max] (the data's range when min == max)",
          {"bins": AttrSpec("int", 100), "min": AttrSpec("float", 0.0), "max": AttrSpec("float", 0.0)}),
    OpDef("index_put", ("x", "values", "*indices"), _index_put_infer, _index_put_ref, Category.LIBRARY,
          "x with x[indices at positions] = values (or += with accumulate); later writes win",
          {"positions": AttrSpec("ints"), "accumulate": AttrSpec("bool", False)}),
]
