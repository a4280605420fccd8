"""``qlinear`` on the cuda target: the warp-per-channel GEMV of ``codegen/qlinear_cuda.py`` for up to
``KERNEL_ROWS`` input rows (decoding); for more (prefill), the weight dequantized on the GPU and one
cuBLAS GEMM (``torch.mm``), as the GEMV would read the packed weight once per row."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..codegen.qlinear_cpu import QLinearVariant
from ..codegen.qlinear_cuda import WARPS, qlinear_cuda_name, qlinear_cuda_source
from ..ir.quant_format import QuantFormat, dequantize
from .qlinear_call import integer_gemm_format, run_by_rows

GRID_Y = 65535


@dataclass
class QLinearCuda:
    """``out = x @ dequantize(qweight, scales, zeros)^T`` on the GPU for one layer's format and sizes."""

    fmt: QuantFormat
    k: int
    n: int
    cp: Any  # the cupy module
    act: str = "none"
    kernel: Any = field(default=None)

    def __post_init__(self) -> None:
        v = QLinearVariant(self.fmt, self.k, True)
        self.kernel = self.cp.RawKernel(qlinear_cuda_source(v), qlinear_cuda_name(v), options=("-std=c++17",))

    def __call__(self, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 out: torch.Tensor) -> None:
        cp, z = self.cp, (zeros if zeros is not None else scales)

        def few(x2: torch.Tensor, out2: torch.Tensor) -> None:
            rows = x2.shape[0]
            self.kernel(((self.n + WARPS - 1) // WARPS, min(rows, GRID_Y)), (32 * WARPS,),
                        (cp.from_dlpack(x2.reshape(-1)), cp.from_dlpack(qweight.reshape(-1)),
                         cp.from_dlpack(scales.reshape(-1)), cp.from_dlpack(z.reshape(-1)),
                         cp.from_dlpack(out2.reshape(-1)), np.int64(rows), np.int64(self.n)))

        def many(x2: torch.Tensor, out2: torch.Tensor) -> None:
            torch.mm(x2, dequantize(qweight, scales, zeros, self.fmt).t(), out=out2)

        def int8_many(xq: torch.Tensor, sx: torch.Tensor, out2: torch.Tensor) -> None:
            # the integer products as a float32 GEMM (cuBLAS)
            torch.mul(xq.to(torch.float32) @ qweight.to(torch.float32).t(), sx * scales.reshape(1, -1), out=out2)

        run_by_rows(x, out, self.k, self.n, self.act, few, many, None,
                    int8_many if integer_gemm_format(self.fmt, self.k) else None)
