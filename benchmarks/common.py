"""Shared benchmark helpers: interleaved timing with medians, peak memory, and table printing."""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def interleaved_medians(contenders: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None] = lambda: None,
                        warmup: int = 3, block: int = 1) -> dict[str, float]:
    """Median seconds per call; contenders take turns each round, so drift hits all alike. With ``block`` > 1
    a turn is one untimed call, which brings the contender's own weights and buffers back into the caches
    the others used, then ``block`` timed ones: a model called again and again, as a user runs it. With
    ``block`` 1 every call follows another contender's, which favours those that read the same weight
    tensors as the one before (eager's and inductor's) over one that keeps its own packed copy."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            if block > 1:
                fn()
            for _ in range(block):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def peak_extra_bytes(fn: Callable[[], Any]) -> int | None:
    """Peak resident memory above the current level while ``fn`` runs (Linux: resets VmHWM first)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status("VmRSS")
    fn()
    return max(0, _status("VmHWM") - base)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


@contextmanager
def cold_caches() -> Iterator[None]:
    """While it lasts, both compilers start cold: inductor with an empty cache directory and no FX
    graph cache, lamina with an empty kernel cache."""
    import torch._inductor.config as inductor_config

    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "LAMINA_CACHE_DIR")}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    os.environ["LAMINA_CACHE_DIR"] = tempfile.mkdtemp(prefix="lamina-cold-")
    try:
        with inductor_config.patch(fx_graph_cache=False):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    text = "\n".join(lines)
    print(text)
    return text
