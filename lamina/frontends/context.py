"""What an ATen converter sees: the node's result type, and helpers that emit lamina ops."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch

from ..ir.builder import GraphBuilder
from ..ir.core import Loc, Value
from ..ir.dtypes import DType, from_torch
from ..ir.shapes import dim
from ..ir.types import TensorType


class Unsupported(Exception):
    """Raised by a converter for arguments lamina cannot express; the reason is reported."""


def tensor_type(meta: Any) -> TensorType:
    """The TensorType of a (fake) tensor from an fx node's ``meta['val']``."""
    try:
        dtype = from_torch(meta.dtype)
    except ValueError as e:
        raise Unsupported(str(e)) from None
    return TensorType(tuple(dim(d) for d in meta.shape), dtype)


def scalar_dtype(value: Any) -> DType:
    if isinstance(value, bool):
        return DType.bool
    if isinstance(value, int):
        return DType.i64
    if isinstance(value, float):
        return DType.f32
    raise Unsupported(f"argument {value!r} of type {type(value).__name__} is not a tensor or a number")


def promoted(a: Any, b: Any) -> DType:
    """torch's result dtype for two operands (Values or Python numbers)."""
    return from_torch(torch.result_type(_sample(a), _sample(b)))


def _sample(x: Any) -> Any:
    if isinstance(x, Value):
        return torch.empty([1] * min(x.type.rank, 1), dtype=_torch_dtype(x.type.dtype))
    return x


def _torch_dtype(d: DType) -> torch.dtype:
    from ..ir.dtypes import to_torch

    return to_torch(d)


@dataclass
class Context:
    """Per-node view for converters: ``out`` is the node's result type(s) as torch traced them;
    ``traced`` the node's positional arguments as torch traced them (fake tensors with their strides)."""

    builder: GraphBuilder
    loc: Loc
    out: TensorType | tuple[TensorType | None, ...] | None
    traced: tuple[Any, ...] = ()

    @property
    def out_type(self) -> TensorType:
        if not isinstance(self.out, TensorType):
            raise Unsupported("expected a single tensor result")
        return self.out

    def emit(self, name: str, *operands: Value, **attrs: Any) -> Value:
        return self.builder.emit_op(name, operands, attrs, self.loc).result

    def emit_multi(self, name: str, operands: Sequence[Value], **attrs: Any) -> tuple[Value, ...]:
        return self.builder.emit_op(name, operands, attrs, self.loc).results

    def value(self, x: Any, dtype: DType | None = None) -> Value:
        """``x`` as a Value of ``dtype``: casts Values, turns Python numbers into rank-0 ``full``."""
        if isinstance(x, Value):
            return x if dtype is None or x.type.dtype == dtype else self.emit("cast", x, dtype=dtype)
        if isinstance(x, (bool, int, float)):
            dtype = dtype or scalar_dtype(x)
            value = bool(x) if dtype is DType.bool else (float(x) if dtype.is_float else int(x))
            return self.emit("full", shape=[], value=value, dtype=dtype)
        if isinstance(x, sympy.Basic) and x.is_integer:  # a size used as a number (``arange(n) + past_len``)
            one = self.emit("arange", start=dim(x), end=dim(x + 1), step=1, dtype=DType.i64)
            return self.value(self.emit("reshape", one, shape=[]), dtype)
        raise Unsupported(f"argument {x!r} of type {type(x).__name__} is not a tensor or a number")

    def reshape(self, x: Value, shape: Sequence[Any]) -> Value:
        shape = [dim(d) for d in shape]
        return x if list(x.type.shape) == shape else self.emit("reshape", x, shape=shape)
