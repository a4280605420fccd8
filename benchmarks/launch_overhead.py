"""Launch overhead: what one tiny kernel costs through each layer of lamina's cpu runtime.

    python benchmarks/launch_overhead.py

Rows: the Numba kernel called directly; the generated wrapper (plan.run: allocate the
output, make its NumPy view, launch); the whole CompiledModule call (input checks, pytree
handling, wrapper); and eager PyTorch's dispatch of the same op, for scale.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lamina  # noqa: E402
from common import machine, print_table  # noqa: E402


class Tiny(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x) * 2.0


def per_call_us(fn, n: int = 20000) -> float:
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(5):  # best of five batches: the floor, not the noise
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def main() -> None:
    print(f"machine: {machine()}")
    model, x = Tiny(), torch.randn(8)
    compiled = lamina.compile(model, (x,))
    executor = compiled._executor
    (ck,) = executor.kernels.values()
    plan = executor.plan_for([x], {})
    x_np, out_np = x.numpy(), torch.empty(8).numpy()
    rows = [
        ("numba kernel, direct", per_call_us(lambda: ck.fn(x_np, out_np))),
        ("generated wrapper (plan.run)", per_call_us(lambda: plan.run([x]))),
        ("CompiledModule call", per_call_us(lambda: compiled(x))),
        ("eager: torch.exp(x) * 2.0", per_call_us(lambda: model(x))),
    ]
    print_table(["layer", "us per call"], [(name, f"{us:.2f}") for name, us in rows])


if __name__ == "__main__":
    main()
