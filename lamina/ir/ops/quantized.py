"""Quantized ops: ``quantize`` packs a float weight, ``qlinear`` multiplies by a packed one.

The storage format (packing, scales, zero points) is ``ir/quant_format.py``. ``quantize``
runs once per plan (its operand is a weight); ``qlinear``'s reference semantics are
dequantize-then-linear, which every kernel is tested against.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..dtypes import DType
from ..opdef import AttrSpec, Category, InferenceError, OpDef
from ..quant_format import QuantFormat, QuantFormatError, dequantize, int8_product, quantize
from ..types import TensorType
from .nn import _product_flops

FORMAT_ATTRS = {"bits": AttrSpec("int"), "group": AttrSpec("int", 0), "scheme": AttrSpec("str", "sym")}


def format_of(name: str, attrs: Mapping[str, Any]) -> QuantFormat:
    try:
        return QuantFormat.of(attrs)
    except QuantFormatError as e:
        raise InferenceError(f"{name}: {e}") from None


def _quantize_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    (w,) = types
    if w.rank != 2 or not all(isinstance(d, int) for d in w.shape) or w.dtype is not DType.f32:
        raise InferenceError(f"quantize needs a float32 weight [out, in] of static shape, got {w}")
    try:
        return list(format_of("quantize", attrs).types(*w.shape))
    except QuantFormatError as e:
        raise InferenceError(str(e)) from None


def _quantize_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    return tuple(t.numpy() for t in quantize(torch.from_numpy(np.ascontiguousarray(a[0])), QuantFormat.of(attrs)))


def _qlinear_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, stored = types[0], types[1:]
    fmt = format_of("qlinear", attrs)
    if x.dtype is not DType.f32 or x.rank < 1:
        raise InferenceError(f"qlinear needs a float32 input, got {x}")
    k = x.shape[-1]
    if not isinstance(k, int):
        raise InferenceError(f"qlinear: the input's last dim must be static, got {x}")
    want_count = 3 if fmt.scheme == "asym" else 2
    if len(stored) != want_count:
        raise InferenceError(f"qlinear with scheme={fmt.scheme} takes (x, qweight, scales"
                             f"{', zeros' if fmt.scheme == 'asym' else ''}), got {len(types)} operands")
    n = stored[0].shape[0] if stored[0].rank == 2 else None
    try:
        want = fmt.types(n, k) if isinstance(n, int) else None
    except QuantFormatError as e:
        raise InferenceError(f"qlinear: {e}") from None
    for role, got, expected in zip(("qweight", "scales", "zeros"), stored, want or ()):
        if got != expected:
            raise InferenceError(f"qlinear: {role} is {got}, but {fmt.bits}-bit {fmt.scheme} group={fmt.group} over "
                                 f"an input of {k} needs {expected}")
    if want is None:
        raise InferenceError(f"qlinear: qweight must be [out, packed in] of static size, got {stored[0]}")
    if attrs["act"] not in ("none", "int8"):
        raise InferenceError(f"qlinear: act={attrs['act']!r} is not supported; use act=none or act=int8")
    return [TensorType(x.shape[:-1] + (n,), DType.f32)]


def _qlinear_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    fmt = QuantFormat.of(attrs)
    stored = [torch.from_numpy(np.ascontiguousarray(t)) for t in a[1:]]
    if attrs["act"] == "int8":
        return int8_product(torch.from_numpy(np.ascontiguousarray(a[0])), stored[0], stored[1],
                            stored[2] if len(stored) == 3 else None, fmt).numpy()
    w = dequantize(stored[0], stored[1], stored[2] if len(stored) == 3 else None, fmt).numpy()
    return np.matmul(a[0], w.T)


DEFS = [
    OpDef("quantize", ("weight",), _quantize_infer, _quantize_ref, Category.LIBRARY,
          "a float32 weight [out, in] packed as (qweight, scales[, zeros]) in the format the attributes name "
          "(bits 8|4, group of the input dim per scale, 0 = per output channel; scheme sym|asym); score: the "
          "layer's importance where a bit budget chose the format (informational)",
          {**FORMAT_ATTRS, "score": AttrSpec("float?", None)}),
    OpDef("qlinear", ("x", "qweight", "scales", "zeros?"), _qlinear_infer, _qlinear_ref, Category.LIBRARY,
          "x @ dequantize(qweight, scales, zeros)^T: a linear layer whose weight is stored quantized "
          "(zeros only with scheme=asym); act=int8 also quantizes x per row to int8 (integer products, any weight format)",
          {**FORMAT_ATTRS, "act": AttrSpec("str", "none")}, flops=_product_flops),
]
