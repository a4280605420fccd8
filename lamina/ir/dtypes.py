"""Element types of lamina tensors and their NumPy / torch counterparts."""
from __future__ import annotations

import enum

import numpy as np


class DType(enum.Enum):
    """A tensor element type; its value is the short name printed in the IR."""

    f64 = "f64"
    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    i64 = "i64"
    i32 = "i32"
    i8 = "i8"
    u8 = "u8"
    i4 = "i4"
    bool = "bool"

    def __str__(self) -> str:
        return self.value

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_int(self) -> bool:
        return self in (DType.i64, DType.i32, DType.i8, DType.u8, DType.i4)

    @property
    def numpy(self) -> np.dtype:
        """The NumPy dtype that stores this type (bf16 is stored as f32, i4 as i8)."""
        return np.dtype(_NUMPY[self])

    @property
    def itemsize(self) -> int:
        """Bytes per element in a torch tensor of this type (bf16: 2, though NumPy holds it as f32)."""
        return _ITEMSIZE[self]

    @staticmethod
    def parse(name: str) -> "DType":
        try:
            return DType(name)
        except ValueError:
            raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(d.value for d in DType)}") from None


_FLOATS = frozenset({DType.f64, DType.f32, DType.f16, DType.bf16})

_NUMPY = {
    DType.f64: "float64",
    DType.f32: "float32",
    DType.f16: "float16",
    DType.bf16: "float32",
    DType.i64: "int64",
    DType.i32: "int32",
    DType.i8: "int8",
    DType.u8: "uint8",
    DType.i4: "int8",
    DType.bool: "bool",
}
_ITEMSIZE = {DType.f64: 8, DType.f32: 4, DType.f16: 2, DType.bf16: 2, DType.i64: 8, DType.i32: 4, DType.i8: 1,
             DType.u8: 1, DType.i4: 1, DType.bool: 1}


def from_torch(torch_dtype: object) -> DType:
    """The DType of a ``torch.dtype``; raises ValueError for types lamina lacks."""
    name = str(torch_dtype).removeprefix("torch.")
    table = {
        "float64": DType.f64, "float32": DType.f32, "float16": DType.f16, "bfloat16": DType.bf16,
        "int64": DType.i64, "int32": DType.i32, "int8": DType.i8, "uint8": DType.u8, "bool": DType.bool,
    }
    if name not in table:
        raise ValueError(f"torch dtype {name} has no lamina equivalent")
    return table[name]


def to_torch(dtype: DType) -> object:
    """The ``torch.dtype`` of a DType (i4 has none and maps to int8)."""
    import torch

    table = {
        DType.f64: torch.float64, DType.f32: torch.float32, DType.f16: torch.float16,
        DType.bf16: torch.bfloat16, DType.i64: torch.int64, DType.i32: torch.int32,
        DType.i8: torch.int8, DType.u8: torch.uint8, DType.i4: torch.int8, DType.bool: torch.bool,
    }
    return table[dtype]


def round_to(array: np.ndarray, dtype: DType) -> np.ndarray:
    """Store ``array`` as ``dtype`` would hold it: casts, and rounds f32 storage to bf16 / clamps i4."""
    out = np.asarray(array).astype(dtype.numpy, copy=False)
    if dtype is DType.bf16:
        bits = np.ascontiguousarray(out, dtype=np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even
        finite = np.isfinite(out)
        out = np.where(finite, rounded.view(np.float32), out).astype(np.float32)
    elif dtype is DType.i4:
        out = np.clip(out, -8, 7).astype(np.int8)
    return out
