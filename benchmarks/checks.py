"""What correctness costs: index checks in gather kernels, and concurrent callers of one compiled module.

    python benchmarks/checks.py [--repeats N] [--skip-inductor]

Part 1 times gathers whose indices are data (each index checked in the kernel) against the same
gathers with indices the graph derives from sizes (``arange``: bounds decided once per plan, no
check in the kernel), beside eager and inductor. Part 2 calls one compiled GPT-2 stack from 1, 2
and 4 threads (calls take turns on a per-executor lock) and reports calls per second beside
eager and inductor under the same threads.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lamina  # noqa: E402
from common import interleaved_medians, machine, print_table  # noqa: E402
from lamina.models import make_gpt2_stack  # noqa: E402


class GatherRows(nn.Module):
    """out = table[ids] * 2 with ids a model input (data: checked in the kernel)."""

    def __init__(self, rows: int, width: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(rows, width), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.table) * 2


class GatherPositions(GatherRows):
    """The same with ids = arange(n) (bounds known from sizes: no check in the kernel)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[-1]).expand_as(ids)
        return nn.functional.embedding(positions, self.table) * 2


class GatherElements(nn.Module):
    """torch.gather along the last dim: one checked index per element."""

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, idx) + 1


def _contenders(model: nn.Module, args: tuple, inductor: bool) -> dict:
    compiled = lamina.compile(model, args)
    out = {"eager": lambda: model(*args), "lamina": lambda: compiled(*args)}
    if inductor:
        torch._dynamo.reset()
        fast = torch.compile(model)
        fast(*args)
        out["inductor"] = lambda: fast(*args)
    return out


def index_checks(repeats: int, inductor: bool) -> None:
    rows, width, n = 32000, 1024, 512
    ids = torch.randint(0, rows, (4, n))
    x = torch.randn(4096, 1024)
    positions = torch.arange(n).expand(4, n).contiguous()
    cases = {
        f"embedding {rows}x{width}, 4x{n} token ids (checked)": (GatherRows(rows, width), (ids,)),
        f"embedding {rows}x{width}, 4x{n} ids 0..{n - 1} as data (checked)": (GatherRows(rows, width), (positions,)),
        f"embedding {rows}x{width}, 4x{n} arange positions (proved)": (GatherPositions(rows, width), (ids,)),
        "gather 4096x1024 along dim 1 (checked per element)": (GatherElements(), (x, torch.randint(0, 1024, x.shape))),
    }
    table = []
    with torch.no_grad():
        for name, (model, args) in cases.items():
            t = interleaved_medians(_contenders(model, args, inductor), repeats)
            table.append([name, f"{t['eager'] * 1e3:.3f}", f"{t['inductor'] * 1e3:.3f}" if "inductor" in t else "-",
                          f"{t['lamina'] * 1e3:.3f}", f"{t['eager'] / t['lamina']:.2f}x",
                          f"{t['inductor'] / t['lamina']:.2f}x" if "inductor" in t else "-"])
    print_table(["index check workload", "eager ms", "inductor ms", "lamina ms", "vs eager", "vs inductor"], table)


def threads(repeats: int, inductor: bool) -> None:
    model, args = make_gpt2_stack(n_layers=4, batch=2, seq=64)
    with torch.no_grad():
        runners = _contenders(model, args, inductor)
    table = []
    for n in (1, 2, 4):
        row = [f"{n} thread(s)"]
        for name, fn in runners.items():
            rates = []
            for _ in range(3):
                rates.append(_calls_per_second(fn, n, repeats))
            row.append(f"{sorted(rates)[1]:.1f}")
        table.append(row)
    print_table(["GPT-2 stack 2x64, concurrent callers", *(f"{k} calls/s" for k in runners)], table)


def _calls_per_second(fn, n_threads: int, calls: int) -> float:
    def work() -> None:
        with torch.no_grad():
            for _ in range(calls):
                fn()

    pool = [threading.Thread(target=work) for _ in range(n_threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return n_threads * calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-inductor", action="store_true")
    ns = parser.parse_args()
    print(f"machine: {machine()}")
    index_checks(ns.repeats, not ns.skip_inductor)
    threads(max(ns.repeats // 3, 5), not ns.skip_inductor)


if __name__ == "__main__":
    main()
