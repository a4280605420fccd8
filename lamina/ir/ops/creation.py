"""Ops that make tensors from attributes: full, arange and constant."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..dtypes import DType
from ..opdef import AttrSpec, InferenceError, Category, OpDef
from ..shapes import dim
from ..types import TensorType


def _full_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    if any(isinstance(d, int) and d < 0 for d in attrs["shape"]):
        raise InferenceError(f"full: negative dim in shape {attrs['shape']}")
    return [TensorType(tuple(dim(d) for d in attrs["shape"]), attrs["dtype"])]


def _full_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    return np.full(attrs["shape"], attrs["value"], dtype=attrs["dtype"].numpy)


def _arange_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    start, end, step = attrs["start"], attrs["end"], attrs["step"]
    if step == 0:
        raise InferenceError("arange: step is 0")
    if isinstance(start, int) and isinstance(end, int):
        length = max(0, -(-(end - start) // step))
    elif step == 1:
        length = dim(end - start)
    else:
        raise InferenceError(f"arange: symbolic bounds need step 1, got {step}")
    return [TensorType((length,), attrs["dtype"])]


def _constant_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    shape = attrs["shape"]
    if any(d < 0 for d in shape) or int(np.prod(shape)) != len(attrs["value"]):
        raise InferenceError(f"constant: {len(attrs['value'])} values do not fill shape {shape}")
    return [TensorType(tuple(shape), attrs["dtype"])]


def _constant_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    return np.array(attrs["value"], dtype=attrs["dtype"].numpy).reshape(attrs["shape"])


DEFS = [
    OpDef("full", (), _full_infer, _full_ref, Category.CONSTANT, "a tensor filled with one value (scalars are shape [])",
          {"shape": AttrSpec("dims"), "value": AttrSpec("scalar"), "dtype": AttrSpec("dtype")}),
    OpDef("arange", (), _arange_infer,
          lambda a, at: np.arange(at["start"], at["end"], at["step"], dtype=at["dtype"].numpy), Category.CONSTANT,
          "start, start+step, ... < end", {"start": AttrSpec("dim", 0), "end": AttrSpec("dim"),
                                             "step": AttrSpec("int", 1), "dtype": AttrSpec("dtype", DType.i64)}),
    # a library op (one buffer made once per plan), not a formula kernels recompute as full's and arange's are
    OpDef("constant", (), _constant_infer, _constant_ref, Category.LIBRARY,
          "a small tensor given element by element (row-major): a router's weights",
          {"value": AttrSpec("floats"), "shape": AttrSpec("ints"), "dtype": AttrSpec("dtype", DType.f32)}),
]
