"""lamina's C GEMM against torch's linear (eager) and inductor's, float32, on the shapes models give it.

    python benchmarks/gemm.py [--repeats N] [--skip-inductor]

Shapes: CNN 1x1 convolutions as linears over pixels (MobileNetV2, RegNet, Swin at batch 8: many rows,
few input channels), ViT and transformer layers, and a decode-sized one. Each contender writes into a
preallocated output (lamina's kernel, ``torch.addmm(out=)``) except inductor's, which returns a new
tensor; interleaved rounds, medians; GFLOP/s and lamina's speedups; the error of lamina's output
against a float64 product, relative to the output's scale. The C GEMM needs AVX-512 and a C compiler.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import interleaved_medians, machine, print_table  # noqa: E402

SHAPES = [  # (rows, in, out): what each model asks of it
    (25088, 96, 288, "Swin-T b8 qkv"), (25088, 288, 96, "Swin-T b8 projection"),
    (25088, 128, 128, "RegNet b8 stage 1 1x1"), (25088, 64, 256, "ResNet-50 b8 1x1"),
    (6272, 192, 192, "RegNet b8 stage 2 1x1"), (6272, 32, 192, "MobileNetV2 b8 expansion"),
    (1568, 512, 512, "RegNet b8 stage 3 1x1"), (392, 1088, 1088, "RegNet b8 stage 4 1x1"),
    (1576, 768, 3072, "ViT-B b8 MLP"), (512, 2048, 5632, "Llama prefill 4x128 MLP"),
    (64, 256, 256, "GPT-2 stack b4 s16"), (8, 768, 768, "8 rows"),
]


def gemm_kernel():
    """The C GEMM as a ctypes function, or None where it cannot run here."""
    from lamina.codegen.cpu_c import PRELUDE
    from lamina.codegen.gemm_c import ARGUMENTS, NAME, gemm_source
    from lamina.runtime.native_kernels import NativeFunction, compiled_function, compiler, cpu_features

    if compiler() is None or "avx512f" not in cpu_features():
        return None
    return compiled_function(NativeFunction(NAME, ARGUMENTS, gemm_source()), PRELUDE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-inductor", action="store_true")
    ns = parser.parse_args()
    from lamina.codegen.gemm_c import pack_weight
    from lamina.runtime.native_kernels import Flat

    kernel = gemm_kernel()
    if kernel is None:
        print("the C GEMM needs AVX-512 and a C compiler; this machine has not both")
        return 1
    print(f"machine: {machine()}")
    rows = []
    for m, k, n, what in SHAPES:
        torch.manual_seed(0)
        x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        packed, ours, theirs = pack_weight(w), torch.empty(m, n), torch.empty(m, n)
        views = [Flat(t) for t in (x, packed, b, ours)]
        contenders = {"eager": lambda: torch.addmm(b, x, w.t(), out=theirs),
                      "lamina": lambda: kernel(*views, m, n, k, n)}
        if not ns.skip_inductor:
            torch._dynamo.reset()
            inductor = torch.compile(lambda x: torch.nn.functional.linear(x, w, b))
            contenders["inductor"] = lambda: inductor(x)
        with torch.no_grad():
            t = interleaved_medians(contenders, ns.repeats)
        want = x.double() @ w.double().t() + b.double()
        err = float((ours.double() - want).abs().max() / want.abs().max())
        rate = {name: 2 * m * k * n / s / 1e9 for name, s in t.items()}
        rows.append([f"{m}x{k}x{n}", what, f"{rate['eager']:.0f}", f"{rate['inductor']:.0f}" if "inductor" in t else "-",
                     f"{rate['lamina']:.0f}", f"{t['eager'] / t['lamina']:.2f}x",
                     f"{t['inductor'] / t['lamina']:.2f}x" if "inductor" in t else "-", f"{err:.1e}"])
        print(" | ".join(rows[-1]), flush=True)
    print()
    print_table(["M x K x N", "from", "eager GFLOP/s", "inductor GFLOP/s", "lamina GFLOP/s", "vs eager",
                 "vs inductor", "lamina err"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
