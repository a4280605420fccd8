"""TensorType: shape (static or symbolic) and element type of an SSA value."""
from __future__ import annotations

from dataclasses import dataclass

from .dtypes import DType
from .shapes import Dim, Shape, format_dim


@dataclass(frozen=True)
class TensorType:
    """``f32[B,T,64]``: a dtype and a shape whose dims are ints or symbols."""

    shape: Shape
    dtype: DType

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape: tuple[Dim, ...]) -> "TensorType":
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(format_dim(d) for d in self.shape)}]"
