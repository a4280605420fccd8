"""Fusion benchmark: eager PyTorch vs torch.compile (inductor) vs lamina (cpu), in one run.

    python benchmarks/fusion.py [--repeats N] [--only NAME ...] [--skip-inductor] [--device cpu|cuda]

Prints, per workload, median time of each contender (interleaved rounds), lamina's speedup
over each, compile times (inductor: first call; lamina: compile() plus first call, which
JIT-compiles the kernels unless the kernel cache has them), and peak extra resident memory
during one call. The arithmetic chain is also compared with ``x.clone()``: one read and one
write of the same bytes into a new tensor, its memory-bound floor. For the memory-bound workloads
(all but the GPT-2 stacks and the MobileNetV2 blocks) "lamina GB/s" is the bytes of inputs, weights
and outputs over lamina's time and "of copy" its fraction of the measured copy bandwidth
(``runtime/limits.py``); for the stacks and blocks ``compiled.profile`` shows where the time goes
(GEMMs against torch.mm's rate).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lamina  # noqa: E402
from common import interleaved_medians, machine, peak_extra_bytes, print_table, timed  # noqa: E402
from lamina.models import make_gpt2_stack  # noqa: E402
from lamina.runtime.limits import measure_limits  # noqa: E402


class ArithmeticChain(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1.5 + 0.5
        y = y * x - 0.25
        y = y / 3.0 + x
        return (y - 1.0) * 0.75 + y


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class TranscendentalChain(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(torch.tanh(torch.exp(x * 0.5) - 1.0) * x)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 projection, each with batch norm (random
    statistics), ReLU6 after the first two, and the residual add."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        wide = channels * expand
        self.layers = nn.Sequential(
            nn.Conv2d(channels, wide, 1, bias=False), nn.BatchNorm2d(wide), nn.ReLU6(),
            nn.Conv2d(wide, wide, 3, padding=1, groups=wide, bias=False), nn.BatchNorm2d(wide), nn.ReLU6(),
            nn.Conv2d(wide, channels, 1, bias=False), nn.BatchNorm2d(channels))
        for norm in self.layers:
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean.uniform_(-0.5, 0.5)
                norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def workloads() -> dict[str, tuple[nn.Module, tuple]]:
    torch.manual_seed(0)
    stack, (idx,) = make_gpt2_stack(batch=4, seq=128, d_model=256, n_heads=4, n_layers=4, vocab=512)
    return {
        "arith chain 8 ops, 16M f32": (ArithmeticChain(), (torch.randn(16 * 2**20),)),
        "exp/tanh/gelu chain, 4M f32": (TranscendentalChain(), (torch.randn(4 * 2**20),)),
        "layer_norm 4096x1024": (nn.LayerNorm(1024).eval(), (torch.randn(4096, 1024),)),
        "softmax 4096x1024": (nn.Softmax(dim=-1), (torch.randn(4096, 1024),)),
        "log_softmax 4096x1024": (nn.LogSoftmax(dim=-1), (torch.randn(4096, 1024),)),
        "softmax 16384x64": (nn.Softmax(dim=-1), (torch.randn(16384, 64),)),
        "log_softmax 16384x64": (nn.LogSoftmax(dim=-1), (torch.randn(16384, 64),)),
        "log 4096x1024": (Log(), (torch.rand(4096, 1024) + 0.01,)),
        "mobilenet block b8 c32 x6 56x56": (InvertedResidual(32, 6), (torch.randn(8, 32, 56, 56),)),
        "mobilenet block b8 c160 x6 14x14": (InvertedResidual(160, 6), (torch.randn(8, 160, 14, 14),)),
        "gpt2 stack b4 s128 d256 L4": (stack, (idx,)),
        "gpt2 stack b1 s1 d256 L4": (stack, (torch.randint(0, 512, (1, 1)),)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", nargs="*", help="substrings of workload names to run")
    parser.add_argument("--skip-inductor", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: eager and inductor on the GPU, lamina with backend='cuda'")
    ns = parser.parse_args()
    cuda = ns.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"machine: {machine()}")
    limits = measure_limits(ns.device)
    print(f"limits: {limits.describe()}")
    rows = []
    for name, (model, args) in workloads().items():
        if ns.only and not any(s in name for s in ns.only):
            continue
        model.eval()
        if cuda:
            model, args = model.cuda(), tuple(a.cuda() for a in args)
        compiled, lamina_s = timed(lambda: lamina.compile(model, args, backend=ns.device))
        with torch.no_grad():  # JIT-compiles the kernels (or loads them from the cache)
            _, first_call = timed(lambda: compiled(*args))
        lamina_s += first_call
        contenders = {"eager": lambda: model(*args), "lamina": lambda: compiled(*args)}
        inductor_s = None
        if not ns.skip_inductor:
            torch._dynamo.reset()
            inductor = torch.compile(model)
            _, inductor_s = timed(lambda: inductor(*args))
            contenders["inductor"] = lambda: inductor(*args)
        if name.startswith("arith"):
            # the floor: one read and one write of the same bytes into a new tensor, as every contender does
            contenders["copy (floor)"] = lambda: args[0].clone()
        with torch.no_grad():
            expected = model(*args)
            err = float((compiled(*args) - expected).abs().max() / expected.abs().max())
            medians = interleaved_medians(contenders, ns.repeats, sync)
            memory = {k: _gpu_peak(fn) if cuda else peak_extra_bytes(fn) for k, fn in contenders.items()}
        t = medians
        moved = sum(a.nbytes for a in args) + expected.nbytes + sum(p.nbytes for p in model.parameters())
        gbps = moved / t["lamina"] / 1e9
        memory_bound = not name.startswith(("gpt2", "mobilenet"))
        row = [name, f"{t['eager'] * 1e3:.3f}", f"{t['inductor'] * 1e3:.3f}" if "inductor" in t else "-",
               f"{t['lamina'] * 1e3:.3f}", f"{t['eager'] / t['lamina']:.2f}x",
               f"{t['inductor'] / t['lamina']:.2f}x" if "inductor" in t else "-",
               f"{t['copy (floor)'] * 1e3:.3f}" if "copy (floor)" in t else "-",
               f"{inductor_s:.1f}" if inductor_s is not None else "-", f"{lamina_s:.1f}",
               "/".join(_mb(memory.get(k)) for k in ("eager", "inductor", "lamina")), f"{err:.1e}",
               f"{gbps:.1f}" if memory_bound else "-", f"{gbps / limits.copy_gbps:.0%}" if memory_bound else "-"]
        rows.append(row)
        print(" ".join(row), flush=True)
    print()
    print_table(["workload", "eager ms", "inductor ms", "lamina ms", "vs eager", "vs inductor", "copy ms",
                 "inductor compile s", "lamina compile s", "peak extra MB e/i/l", "lamina err", "lamina GB/s",
                 "of copy"], rows)


def _gpu_peak(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _mb(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


if __name__ == "__main__":
    main()
