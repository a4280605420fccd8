"""Ops whose output positions map to input positions by index arithmetic: pad, slice_scatter, as_strided.

Each is computed per output element in a generated kernel (no library call): ``pad`` reads
the input where the position falls inside it, ``slice_scatter`` reads ``src`` on the slice and
``x`` elsewhere, ``as_strided`` reads the input's row-major elements at ``offset + sum(i * stride)``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sympy

from ..opdef import AttrSpec, InferenceError, Category, OpDef, same_dtype
from ..shapes import dim, numel
from ..types import TensorType
from .layout import _slice_infer


def _pad_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = types[0]
    low, high = attrs["low"], attrs["high"]
    if len(low) != x.rank or len(high) != x.rank:
        raise InferenceError(f"pad: low {low} and high {high} need one entry per dim of {x}")
    shape = []
    for d, lo, hi in zip(x.shape, low, high):
        size = dim(sympy.sympify(d) + lo + hi)
        if isinstance(size, int) and size < 0:
            raise InferenceError(f"pad: padding {lo}, {hi} removes more than dim {d}")
        shape.append(size)
    return [x.with_shape(tuple(shape))]


def _pad_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0]
    crop = tuple(slice(max(-lo, 0), n - max(-hi, 0)) for n, lo, hi in zip(x.shape, attrs["low"], attrs["high"]))
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in zip(attrs["low"], attrs["high"])]
    return np.pad(x[crop], widths, constant_values=np.asarray(attrs["value"]).astype(x.dtype))


def _slice_scatter_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, src = types
    same_dtype("slice_scatter", types)
    (want,) = _slice_infer([x], attrs)
    if src.shape != want.shape:
        raise InferenceError(f"slice_scatter: src {src} does not fit the slice {want} of {x}")
    return [x]


def _slice_scatter_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    out = a[0].copy()
    key = [slice(None)] * out.ndim
    key[attrs["dim"] % out.ndim] = slice(attrs["start"], attrs["end"], attrs["step"])
    out[tuple(key)] = a[1]
    return out


def _as_strided_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = types[0]
    size, stride, offset = attrs["size"], attrs["stride"], attrs["offset"]
    if len(size) != len(stride):
        raise InferenceError(f"as_strided: size {size} and stride {stride} differ in length")
    if any(s < 0 for s in stride) or offset < 0:
        raise InferenceError(f"as_strided: negative stride or offset ({stride}, {offset})")
    last = offset + sum((sympy.sympify(n) - 1) * s for n, s in zip(size, stride))
    reach = sympy.simplify(numel(x.shape) - 1 - last)
    if reach.is_negative:
        raise InferenceError(f"as_strided: size {size}, stride {stride}, offset {offset} reach past the "
                             f"{numel(x.shape)} elements of {x}")
    return [x.with_shape(tuple(dim(d) for d in size))]


def _as_strided_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    flat = np.ascontiguousarray(a[0]).reshape(-1)
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[attrs["offset"]:], shape=attrs["size"],
                                           strides=[s * item for s in attrs["stride"]], writeable=False)
    return view.copy()


def _slice_attrs() -> dict[str, AttrSpec]:
    return {"dim": AttrSpec("int"), "start": AttrSpec("dim", 0), "end": AttrSpec("dim"), "step": AttrSpec("int", 1)}


DEFS = [
    OpDef("pad", ("x",), _pad_infer, _pad_ref, Category.POINTWISE,
          "constant padding: low[d] elements before and high[d] after each dim (negative crops)",
          {"low": AttrSpec("ints"), "high": AttrSpec("ints"), "value": AttrSpec("scalar", 0)}, remapped=(0,)),
    OpDef("slice_scatter", ("x", "src"), _slice_scatter_infer, _slice_scatter_ref, Category.POINTWISE,
          "x with x[start:end:step] along dim replaced by src", _slice_attrs(), remapped=(1,)),
    OpDef("as_strided", ("x",), _as_strided_infer, _as_strided_ref, Category.POINTWISE,
          "out[i] = x.flatten()[offset + sum(i[d] * stride[d])] (x in row-major order)",
          {"size": AttrSpec("dims"), "stride": AttrSpec("ints"), "offset": AttrSpec("int", 0)}, remapped=(0,)),
]
