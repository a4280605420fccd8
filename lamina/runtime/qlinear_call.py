"""What the cpu and cuda ``qlinear`` dispatchers share: the wrapper line that calls one, and the choice
of path by the number of input rows."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..ir.core import Op
from ..ir.quant_format import QuantFormat, quantize_rows

KERNEL_ROWS = 16  # up to this many input rows the target's own kernel runs; past it a GEMM


def integer_gemm_format(fmt: QuantFormat, k: int) -> bool:
    """Whether ``act=int8`` rows can go to one integer GEMM: 8-bit per-channel symmetric weights (a
    scale per group would need a GEMM per group)."""
    return (fmt.bits, fmt.group_size(k), fmt.scheme) == (8, k, "sym")


Path = Callable[[torch.Tensor, torch.Tensor], None]  # (x [rows, K] contiguous, out [rows, N] contiguous)


def run_by_rows(x: torch.Tensor, out: torch.Tensor, k: int, n: int, act: str, few: Path, many: Path,
                int8_few: Path | None = None,
                int8_many: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
                int8_rows_many: Path | None = None) -> None:
    """``few`` for up to ``KERNEL_ROWS`` rows of ``x``, else ``many``. With ``act=int8``: ``int8_few`` (a
    kernel that quantizes the rows itself) for few rows where the target has one, and past
    ``KERNEL_ROWS`` ``int8_many(values, row scales, out)`` (an integer GEMM) where the format allows,
    else ``int8_rows_many`` (a float GEMM that quantizes the rows itself) where the target has one;
    otherwise the rows are quantized here and ``few`` / ``many`` run on their dequantized values.
    A non-contiguous ``out`` is written through a contiguous buffer."""
    rows = x.numel() // k
    if rows == 0:
        return
    x2 = x.reshape(rows, k).contiguous()
    target = out if out.is_contiguous() else torch.empty(out.shape, dtype=out.dtype, device=out.device)
    out2 = target.view(rows, n)
    if act == "int8" and rows <= KERNEL_ROWS and int8_few is not None:
        int8_few(x2, out2)
    elif act == "int8" and rows > KERNEL_ROWS and int8_many is None and int8_rows_many is not None:
        int8_rows_many(x2, out2)
    elif act == "int8":
        xq, sx = quantize_rows(x2)
        if rows > KERNEL_ROWS and int8_many is not None:
            int8_many(xq, sx, out2)
        else:  # the float kernels on the quantized activations
            (few if rows <= KERNEL_ROWS else many)(xq.to(torch.float32) * sx, out2)
    else:
        (few if rows <= KERNEL_ROWS else many)(x2, out2)
    if target is not out:
        out.copy_(target)


def qlinear_lines(op: Op, args: list[str], out: str, plan: Any,
                  make: Callable[[QuantFormat, int, int, str], Any]) -> list[str]:
    """``make(format, K, N, act)`` builds the dispatcher, kept by the plan; the line calls it with x,
    qweight, scales, zeros (or None) and the output buffer."""
    fmt = QuantFormat.of(op.attrs)
    k, n = op.operands[0].type.shape[-1], op.results[0].type.shape[-1]
    fn = plan.static(make(fmt, k, n, op.attrs["act"]), "Q")
    zeros = args[3] if len(args) == 4 else "None"
    return [f"{fn}({args[0]}, {args[1]}, {args[2]}, {zeros}, {out})"]
