"""Tensor parallelism on 2 gloo ranks (one thread each): step time and exposed communication with and without
overlap, over a simulated link (none, 10 GB/s, 1 GB/s, 0.1 GB/s).

Usage: ``python benchmarks/overlap.py [--d-model 1024] [--layers 4] [--batch 4] [--tokens 128] [--rounds 5]
[--configs tp,tp+split,...]``

Each rank compiles lamina's GPT-2 stack once per configuration (``lamina.distributed.compile``): "tp" (one
blocking all-reduce per sublayer), "tp+split" (``overlap{split=2}``: batch halves), "tp+chunks"
(``overlap{chunks=4}``: chunked row GEMMs), "tp+norm" (``overlap{norm=1}``: the sequence-parallel
stream) and "tp+split+norm" (both: the halves' reduce-scatters and all-gathers started); on request
"tp+split4" and "tp+split4+norm" (four pieces of the batch).
Per link speed (``CompiledModule.simulate_link``: a collective is not done before its bytes could cross
that link) the configurations run interleaved, round by round; step time is the median over rounds on
rank 0, and the exposed communication (time blocked in waits and blocking collectives) and compute run
under collectives in flight come from one profiled call (``CompiledModule.profile``). "hidden" is
1 - exposed / exposed of "tp" at the same link. Memory: each configuration's weights (this rank's
shards) and plan arena, and the rank's resident-set high-water mark during its profiled call (Linux:
reset before it through ``/proc/self/clear_refs``; the whole process, every compiled configuration
included). The timeline of the fastest configuration at the slowest link is written to
``benchmarks/overlap_timeline.png`` and ``overlap_trace.json``. Outputs are checked equal across
configurations.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, print_table  # noqa: E402

import lamina  # noqa: E402
import lamina.distributed  # noqa: E402
from lamina.models.gpt2_stack import make_gpt2_stack  # noqa: E402

CONFIGS = {"tp": "", "tp+split": "overlap{split=2},", "tp+chunks": "overlap{chunks=4},",
           "tp+norm": "overlap{norm=1},", "tp+split+norm": "overlap{split=2,norm=1},",
           "tp+split4": "overlap{split=4},", "tp+split4+norm": "overlap{split=4,norm=1},"}
DEFAULT_CONFIGS = "tp,tp+split,tp+chunks,tp+norm,tp+split+norm"
LINKS = {"none": None, "10 GB/s": 10.0, "1 GB/s": 1.0, "0.1 GB/s": 0.1}
HERE = Path(__file__).resolve().parent


def rank_main(rank: int, world: int, ns: argparse.Namespace) -> list[tuple]:
    import torch.distributed as dist

    from lamina.runtime.timeline import plot, write_chrome_trace

    model, (ids,) = make_gpt2_stack(batch=ns.batch, seq=ns.tokens, d_model=ns.d_model, n_heads=ns.d_model // 64,
                                    n_layers=ns.layers)
    compiled = {name: lamina.distributed.compile(model, (ids,), pipeline=f"canonicalize,shard{{tp={world}}},{extra}fuse")
                for name, extra in CONFIGS.items() if name in ns.configs}
    rows = []
    with torch.no_grad():
        outputs = {name: fn(ids) for name, fn in compiled.items()}
        for name, out in outputs.items():
            torch.testing.assert_close(out, outputs["tp"], rtol=1e-5, atol=1e-5)
        for link_name, gbps in LINKS.items():
            times: dict[str, list[float]] = {name: [] for name in compiled}
            for fn in compiled.values():
                fn.simulate_link(gbps)
                fn(ids)
            for _ in range(ns.rounds):
                for name, fn in compiled.items():
                    dist.barrier()
                    start = time.perf_counter()
                    fn(ids)
                    times[name].append((time.perf_counter() - start) * 1e3)
            profiled = {}
            for name, fn in compiled.items():
                arena = fn.plan_cache.arena_bytes  # of the plan the timed calls ran (profiling replans)
                dist.barrier()
                _reset_peak_rss()
                profiled[name] = fn.profile(ids)
                rows.append((link_name, name, statistics.median(times[name]), profiled[name].compute_ms,
                             profiled[name].exposed_ms, profiled[name].overlapped_ms, fn.weight_bytes / 2**20,
                             arena / 2**20, _peak_rss_mb()))
        best = [min(times, key=lambda name: statistics.median(times[name]))]  # at the slowest link, rank 0's pick
        dist.broadcast_object_list(best, src=0)
        timelines = [None] * world
        dist.all_gather_object(timelines, profiled[best[0]])
        if rank == 0:
            write_chrome_trace(timelines, HERE / "overlap_trace.json")
            plot(timelines, HERE / "overlap_timeline.png", f"{best[0]} (fastest), link {link_name}")
    return rows


def _reset_peak_rss() -> None:
    """Linux: the resident-set high-water mark starts again from the current size (``clear_refs`` 5), after
    glibc has given back the heap it keeps freed (the plans rebuilt per link left 2-3 GB of it, with 0.9 GB
    live), so that the mark measures the call."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float:
    """The resident-set high-water mark since the last reset (``VmHWM``), in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"comma-separated, tp first, of: {', '.join(CONFIGS)} (default: %(default)s)")
    ns = parser.parse_args()
    ns.configs = ns.configs.split(",")
    unknown = [c for c in ns.configs if c not in CONFIGS]
    if unknown or ns.configs[0] != "tp":
        parser.error(f"--configs: {', '.join(unknown) or 'tp must come first'}; choose from {', '.join(CONFIGS)}")
    print(f"machine: {machine()}; 2 ranks, gloo on loopback, 1 thread each")
    rows = lamina.distributed.spawn(rank_main, 2, ns, timeout_s=3600)[0]
    base = {link: step for link, name, step, *_ in rows if name == "tp"}
    exposed_base = {link: exposed for link, name, _, _, exposed, *_ in rows if name == "tp"}
    table = []
    for link, name, step, compute, exposed, overlapped, weights, arena, rss in rows:
        hidden = 1 - exposed / exposed_base[link] if exposed_base[link] > 0 else 0.0
        table.append((link, name, f"{step:.1f}", f"{base[link] / step:.2f}x", f"{compute:.1f}", f"{exposed:.1f}",
                      f"{overlapped:.1f}", f"{hidden:.0%}", f"{weights:.0f} + {arena:.0f}", f"{rss:.0f}"))
    print(f"\nGPT-2 stack: d_model {ns.d_model}, {ns.layers} layers, batch {ns.batch} x {ns.tokens} tokens, tp=2")
    print_table(["link", "config", "step ms", "vs tp", "compute ms", "exposed comm ms", "compute under comm ms", "hidden",
                 "weights + arena MB (rank 0)", "peak RSS MB in the step (rank 0)"], table)


if __name__ == "__main__":
    main()
