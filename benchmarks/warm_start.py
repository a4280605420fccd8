"""Warm start: a saved module's first output in a fresh process, lamina beside AOTInductor.

Builds the GPT-2 stack of ``benchmarks/fusion.py`` (batch 4 x 128, d_model 256, 4 layers), saves it
with ``lamina.save`` (graph, weights, compiled kernels in one file) and with AOTInductor
(``torch._inductor.aoti_compile_and_package``), then in fresh Python processes, interleaved, times:

- ``import torch`` (both pay it; reported on its own),
- ``import lamina``, ``lamina.load`` and the first call, against ``aoti_load_package`` and its first call:
  lamina's file holds a frozen plan with its kernels as a C library (what ``lamina.load`` uses), and
  also the graph and Numba kernels it plans from when told ``frozen=False`` (also timed, with this
  machine's kernel cache and with an empty one: a new machine).

The fresh processes write and use Python's bytecode caches (as an installed package has them), so
neither contender's time includes compiling its own Python sources.

Prints a table of medians. Usage: ``python benchmarks/warm_start.py [--rounds 5]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lamina.models import make_gpt2_stack  # noqa: E402

FRESH_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import {package}
t2 = time.perf_counter()
idx = torch.load(sys.argv[2])
t3 = time.perf_counter()
m = {load}(sys.argv[1])
t4 = time.perf_counter()
with torch.inference_mode():
    m(idx)
    t5 = time.perf_counter()
    calls = []
    for _ in range(20):
        t = time.perf_counter()
        m(idx)
        calls.append(time.perf_counter() - t)
print(json.dumps({{"torch": t1 - t0, "import": t2 - t1, "load": t4 - t3, "first": t5 - t4, "after_import": t5 - t3,
                  "call": sorted(calls)[10]}}))
"""
LAMINA = FRESH_PROCESS.format(package="lamina", load="lamina.load")
PLANNED = FRESH_PROCESS.format(package="lamina", load="(lambda p: lamina.load(p, frozen=False))")
AOTI = FRESH_PROCESS.format(package="torch._inductor", load="torch._inductor.aoti_load_package")


def fresh(script: str, package: Path, idx: Path, cache: str | None = None) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if cache is not None:
        env["LAMINA_CACHE_DIR"] = cache
    done = subprocess.run([sys.executable, "-c", script, str(package), str(idx)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    import lamina

    work = Path(tempfile.mkdtemp(prefix="lamina-warm-"))
    model, (idx,) = make_gpt2_stack(batch=4, seq=128, d_model=256, n_heads=4, n_layers=4, vocab=512)
    torch.save(idx, work / "idx.pt")
    t = time.perf_counter()
    compiled = lamina.compile(model, (idx,))
    with torch.inference_mode():
        compiled(idx)
    lamina.save(compiled, work / "gpt2.lamina", frozen=True)  # whatever the speed check at save says
    lamina_build = time.perf_counter() - t
    t = time.perf_counter()
    exported = torch.export.export(model, (idx,))
    aoti = Path(torch._inductor.aoti_compile_and_package(exported, package_path=str(work / "gpt2.pt2")))
    aoti_build = time.perf_counter() - t
    rows: dict[str, list[dict[str, float]]] = {"lamina (frozen plan)": [], "lamina, planned on load": [],
                                               "lamina, planned on load, empty kernel cache": [], "AOTInductor": []}
    fresh(LAMINA, work / "gpt2.lamina", work / "idx.pt")  # writes the bytecode caches both sides then use
    fresh(AOTI, aoti, work / "idx.pt")
    for _ in range(ns.rounds):
        rows["lamina (frozen plan)"].append(fresh(LAMINA, work / "gpt2.lamina", work / "idx.pt"))
        rows["lamina, planned on load"].append(fresh(PLANNED, work / "gpt2.lamina", work / "idx.pt"))
        rows["lamina, planned on load, empty kernel cache"].append(
            fresh(PLANNED, work / "gpt2.lamina", work / "idx.pt", tempfile.mkdtemp(prefix="lamina-cache-", dir=work)))
        rows["AOTInductor"].append(fresh(AOTI, aoti, work / "idx.pt"))
    print(f"machine: {_cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads; GPT-2 stack b4 s128 "
          f"d256 L4; medians of {ns.rounds} fresh processes")
    print(f"build + save: lamina {lamina_build:.1f} s ({(work / 'gpt2.lamina').stat().st_size / 1e6:.1f} MB), "
          f"AOTInductor {aoti_build:.1f} s ({aoti.stat().st_size / 1e6:.1f} MB)")
    print("| contender | import torch s | import package s | load s | first call s | load + first call s | "
          "later calls ms (median of 20) |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"| {name} | {med['torch']:.2f} | {med['import']:.3f} | {med['load']:.3f} | {med['first']:.3f} | "
              f"{med['after_import']:.3f} | {med['call'] * 1e3:.1f} |")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
