"""Which float32 linears run lamina's C GEMM (``codegen/gemm_c.py``) and which torch's (MKL), by CPU and shape.

Measured with ``benchmarks/gemm.py`` against ``torch.addmm`` into a preallocated output, 2 threads
(benchmarks/RESULTS.md):

- AMD CPUs with AVX-512 (Zen 4): MKL takes its AVX2 code there, and lamina's GEMM was 1.2-2.4x
  faster at every shape the models give it, so it runs every linear past the GEMV's rows (``"all"``);
  the grouped convolution, measured only there against oneDNN, goes with it.
- Intel CPUs with AVX-512 (Sapphire Rapids class): MKL runs at the FMA peak on large products, where
  lamina's GEMM is 0.88-0.97x (K and N both 512 or more over 512 or more rows), but pays for its
  blocking on narrow or short ones, where lamina's is 1.03-2.8x: a side (K or N) of at most
  ``NARROW`` at any number of rows (a CNN's 1x1 convolutions into or out of few channels), and up
  to ``SHORT_ROWS`` rows where the weight has at most ``SHORT_WEIGHT`` values (a transformer's layers
  over a prompt of 64 tokens: 1.15-1.65x; at 128-256 rows the two were within 0.93-1.15x of each
  other, so MKL keeps those). Those run lamina's (``"shape"``), the rest MKL.
- Quantized weights past the quantized kernels' rows (a prefill) take lamina's quantized GEMM
  (``codegen/qgemm_c.py``, tiles dequantized into the GEMM's layout) on either CPU: on the Xeon one
  512 x 2048 x 5632 layer ran it at 0.91-0.92x of MKL's float32 product, and the other path
  (dequantize blocks of the weight, then ``torch.mm``) at 0.69x. On a CPU with AMX (``amx``) the
  quantized GEMM multiplies bfloat16 tiles instead (``codegen/qgemm_amx.py``: the weight's integers
  and x in three exact bfloat16 terms): that layer at 1.7-2.3x MKL's float32 product.
- No AVX-512: the GEMM does not compile for the CPU (``"none"``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .native_kernels import cpu_features, cpu_vendor

NARROW = 128  # K or N at most this: the C GEMM at any number of rows ("shape")
SHORT_ROWS = 64  # up to this many rows ...
SHORT_WEIGHT = 1 << 22  # ... where K * N is at most this (a 1024 x 4096 weight)

AMX_FEATURES = ("amx_tile", "amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags ``codegen/qgemm_amx.py`` needs
Mode = Literal["all", "shape", "none"]


@dataclass(frozen=True)
class GemmChoice:
    """``mode``: ``"all"`` (lamina's GEMM for every float32 linear past the GEMV's rows), ``"shape"`` (where
    ``rows_limit`` says, torch's elsewhere), ``"none"`` (torch's); ``amx``: quantized prefills on AMX tiles."""

    mode: Mode = "none"
    amx: bool = False  # quantized GEMMs on AMX tiles (``codegen/qgemm_amx.py``); only with the C GEMM available

    @staticmethod
    def for_this_cpu() -> "GemmChoice":
        """The choice measured for this CPU's vendor (see the module doc)."""
        if "avx512f" not in cpu_features():
            return GemmChoice("none")
        amx = all(f in cpu_features() for f in AMX_FEATURES)
        return GemmChoice("all" if cpu_vendor() == "AuthenticAMD" else "shape", amx=amx)

    @property
    def available(self) -> bool:
        """Whether lamina's GEMM runs on this CPU at all (some shapes, or every one)."""
        return self.mode != "none"

    @property
    def everywhere(self) -> bool:
        """Whether every shape runs lamina's GEMM (and the grouped convolution, measured only where it does)."""
        return self.mode == "all"

    def rows_limit(self, k: int, n: int) -> float:
        """Up to how many rows a linear with ``k`` inputs and ``n`` outputs runs lamina's GEMM (past the GEMV's
        rows: ``gemm_epilogue.runs_the_gemm``): ``math.inf`` for any number, 0 for none."""
        if self.mode == "all" or (self.mode == "shape" and min(k, n) <= NARROW):
            return math.inf
        if self.mode == "shape" and k * n <= SHORT_WEIGHT:
            return SHORT_ROWS
        return 0

