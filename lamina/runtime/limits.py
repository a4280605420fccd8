"""What the machine can do, measured: the copy bandwidth and torch.mm's float32 rate.

Profiles (``runtime/timeline.py``) state each step's rate as a fraction of these: a memory-bound
kernel against the bandwidth of a plain copy (bytes read plus bytes written), a GEMM-bound one
against ``torch.mm`` on square float32 matrices. Measuring takes about half a second.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Limits:
    copy_gbps: float    # read + write bytes per second of a large tensor copy, in GB/s
    gemm_gflops: float  # torch.mm, float32, square matrices
    device: str

    def describe(self) -> str:
        return (f"copy {self.copy_gbps:.1f} GB/s (read + write), torch.mm {self.gemm_gflops:.0f} GFLOP/s float32 "
                f"on {self.device}, {torch.get_num_threads()} threads")


def measure_limits(device: str = "cpu", copy_mb: int = 256, gemm_n: int = 2048) -> Limits:
    """The copy bandwidth (``copy_mb`` MB copied) and torch.mm's rate (``gemm_n`` square), medians of 5."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def median_seconds(fn) -> float:
        fn()
        sync()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    src = torch.empty(copy_mb << 18, device=device)  # float32: copy_mb MB
    dst = torch.empty_like(src)
    copy = 2 * src.nbytes / median_seconds(lambda: dst.copy_(src)) / 1e9
    a = torch.randn(gemm_n, gemm_n, device=device)
    b = torch.randn(gemm_n, gemm_n, device=device)
    out = torch.empty(gemm_n, gemm_n, device=device)
    gemm = 2 * gemm_n ** 3 / median_seconds(lambda: torch.mm(a, b, out=out)) / 1e9
    return Limits(copy, gemm, device)
