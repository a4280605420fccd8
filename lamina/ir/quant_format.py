"""How lamina stores a quantized weight: packed integers, scales and zero points.

A float weight ``w`` of shape [N, K] (a linear layer's [out, in]) is cut along K into groups
of ``group`` elements (``group=0``: one group per row, i.e. per output channel), and each
group gets one float32 scale (and, for ``scheme="asym"``, one zero point)::

    w[n, k] ~= (v[n, k] - offset[n, g]) * scale[n, g]      g = k // group

``v`` is the stored integer and ``offset`` is 0 for 8-bit ``sym``, 8 for 4-bit ``sym`` and the
zero point for ``asym``. The stored tensors:

    bits scheme  qweight          scales          zeros
    8    sym     i8[N, K]         f32[N, K/G]     -
    8    asym    u8[N, K]         f32[N, K/G]     f32[N, K/G] (integers in 0..255)
    4    sym     u8[N, K/2]       f32[N, K/G]     -
    4    asym    u8[N, K/2]       f32[N, K/G]     f32[N, K/G] (integers in 0..15)

4-bit values are packed two per byte in blocks of 32 consecutive elements: byte j of a block
holds element j in its low nibble and element j + 16 in its high nibble, so a kernel reads
x[j] and x[j + 16] as two contiguous runs. 4-bit groups are therefore multiples of 32 (and
per-channel 4-bit needs K a multiple of 32); a group that does not divide K is an error,
never padding.

``act=int8`` (W8A8, W4A8) also quantizes the activations per row to int8 at run time
(``quantize_rows``), for every weight format: each group's products are then integers
(``int8_product`` is the reference: the exact sum in float64 of the int8 activations times the
dequantized weight, scaled by the row's scale and rounded once to float32).

Rounding is half to even; ``sym`` maps the group's largest magnitude to 127 (8-bit) or 7
(4-bit); ``asym`` maps [min(w, 0), max(w, 0)] onto 0..255 or 0..15. An all-zero group gets
scale 0 and dequantizes to zeros. ``quantize`` and ``dequantize`` here are the one
implementation: the interpreter's reference semantics, the runtime's plan-time packing and
the tests all call them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .dtypes import DType
from .errors import LaminaError
from .types import TensorType

BLOCK4 = 32  # elements per packed 4-bit block (16 bytes)
SCHEMES = ("sym", "asym")


class QuantFormatError(LaminaError, ValueError):
    """A quantization format that cannot hold a weight: bits, group or scheme."""


@dataclass(frozen=True)
class QuantFormat:
    """``bits`` (8 or 4), ``group`` (elements per scale along K; 0 = per output channel), ``scheme``."""

    bits: int
    group: int
    scheme: str = "sym"

    def __post_init__(self) -> None:
        if self.bits not in (8, 4):
            raise QuantFormatError(f"quantize: bits={self.bits} is not supported; use bits=8 or bits=4")
        if self.scheme not in SCHEMES:
            raise QuantFormatError(f"quantize: scheme={self.scheme!r} is not supported; use scheme=sym or scheme=asym")
        if self.group < 0:
            raise QuantFormatError(f"quantize: group={self.group} must be 0 (per output channel) or positive")
        if self.bits == 4 and self.group % BLOCK4:
            raise QuantFormatError(f"quantize: 4-bit groups are multiples of {BLOCK4} (values are packed in blocks "
                                   f"of {BLOCK4}); got group={self.group}")

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> "QuantFormat":
        return cls(attrs["bits"], attrs["group"], attrs["scheme"])

    @property
    def label(self) -> str:
        """``int4 g32 sym``, ``int8 per-channel asym``: how reports and calibration name the format."""
        return f"int{self.bits} {f'g{self.group}' if self.group else 'per-channel'} {self.scheme}"

    def attrs(self) -> dict[str, Any]:
        return {"bits": self.bits, "group": self.group, "scheme": self.scheme}

    def group_size(self, k: int) -> int:
        """Elements per scale for rows of ``k`` elements; raises naming the option when it cannot fit."""
        g = self.group or k
        if k % g:
            raise QuantFormatError(f"quantize: group={self.group} does not divide the input size {k}; pick a "
                                   f"group that divides it (or group=0, one scale per output channel)")
        if self.bits == 4 and g % BLOCK4:
            raise QuantFormatError(f"quantize: 4-bit needs the input size {k} to be a multiple of {BLOCK4} "
                                   f"(values are packed in blocks of {BLOCK4}); use bits=8 for this layer")
        return g

    @property
    def offset(self) -> int:
        """The stored value that means zero for ``sym`` (asym has a zero point per group)."""
        return 8 if self.bits == 4 else 0

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def types(self, n: int, k: int) -> tuple[TensorType, ...]:
        """The types of (qweight, scales[, zeros]) for an [n, k] weight."""
        groups = k // self.group_size(k)
        packed = TensorType((n, k // 2), DType.u8) if self.bits == 4 else \
            TensorType((n, k), DType.i8 if self.scheme == "sym" else DType.u8)
        scales = TensorType((n, groups), DType.f32)
        return (packed, scales, scales) if self.scheme == "asym" else (packed, scales)

    def bytes_per_weight(self, k: int) -> float:
        """Bytes a weight element costs, its share of scales and zero points included."""
        per_group = (4 if self.scheme == "sym" else 8) / self.group_size(k)
        return self.bits / 8 + per_group


def quantize(w: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, ...]:
    """(qweight, scales[, zeros]) of the float weight ``w`` [N, K] in format ``fmt``."""
    if w.dim() != 2:
        raise QuantFormatError(f"quantize: a weight must be [out, in], got shape {list(w.shape)}")
    n, k = w.shape
    g = fmt.group_size(k)
    groups = w.detach().to(torch.float32).reshape(n, k // g, g)
    if fmt.scheme == "sym":
        top = (1 << (fmt.bits - 1)) - 1
        scale = groups.abs().amax(-1) / top
        q = torch.round(groups / _nonzero(scale)[..., None]).clamp(-top - 1, top)
        stored = q + fmt.offset
        extra: tuple[torch.Tensor, ...] = ()
    else:
        lo, hi = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
        scale = (hi - lo) / fmt.levels
        zero = torch.round(-lo / _nonzero(scale)).clamp(0, fmt.levels)
        stored = (torch.round(groups / _nonzero(scale)[..., None]) + zero[..., None]).clamp(0, fmt.levels)
        extra = (zero.contiguous(),)
    stored = stored.reshape(n, k)
    if fmt.bits == 8:
        packed = stored.to(torch.int8 if fmt.scheme == "sym" else torch.uint8)
    else:
        blocks = stored.to(torch.uint8).reshape(n, k // BLOCK4, 2, BLOCK4 // 2)
        packed = (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, k // 2)
    return (packed.contiguous(), scale.contiguous(), *extra)


def unpack(qweight: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """The stored integers ``v`` [N, K] as int32 (4-bit nibbles unpacked)."""
    if fmt.bits == 8:
        return qweight.to(torch.int32)
    n, half = qweight.shape
    blocks = qweight.reshape(n, half * 2 // BLOCK4, BLOCK4 // 2).to(torch.int32)
    return torch.cat([blocks & 15, blocks >> 4], dim=-1).reshape(n, half * 2)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               fmt: QuantFormat, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [N, K] the stored tensors mean, computed in ``dtype`` (float64: exactly)."""
    v = unpack(qweight, fmt)
    n, k = v.shape
    g = fmt.group_size(k)
    offset = zeros.to(dtype)[..., None] if zeros is not None else fmt.offset
    return ((v.reshape(n, k // g, g).to(dtype) - offset) * scales.to(dtype)[..., None]).reshape(n, k)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations quantized per row (per token), symmetric int8: (values, float32 scales [..., 1]);
    ``act=int8``'s dynamic quantization. An all-zero row gets scale 0."""
    scale = x.abs().amax(-1, keepdim=True) / 127
    return torch.round(x / _nonzero(scale)).clamp(-127, 127).to(torch.int8), scale


def int8_product(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 fmt: QuantFormat) -> torch.Tensor:
    """``act=int8``'s meaning: x [..., K] quantized per row (``quantize_rows``) times the weight the stored
    tensors mean, ``sum_k xq[k] * (v[n, k] - offset[n, g]) * scale[n, g]`` summed in float64 (exactly, for
    any K a float32 model has), times the row's scale, rounded once to float32."""
    xq, sx = quantize_rows(x)
    w = dequantize(qweight, scales, zeros, fmt, torch.float64)
    return ((xq.to(torch.float64) @ w.t()) * sx.to(torch.float64)).to(torch.float32)


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` with zeros replaced by ones, to divide by (an all-zero group quantizes to zeros)."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)
