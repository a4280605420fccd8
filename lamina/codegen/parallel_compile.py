"""Compile new Numba kernels in several processes at once.

Numba compiles one function at a time per process (a global lock), and a fused kernel takes about
a second, so a model with dozens of new kernels waited for them one after another on one core.
``compile_in_workers`` hands them to ``compile_worker.py`` processes (one per core, the longest
kernels first, each to the least loaded worker); each fills Numba's on-disk cache, and the parent's
first call of a kernel then loads it instead of compiling. Nothing depends on a worker succeeding:
a kernel a worker did not compile (it failed, timed out, or Numba's cache is off) is compiled by
the parent on its first call, as without workers.

``LAMINA_COMPILE_WORKERS`` sets the number of processes (``0`` or ``1``: compile in the parent).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..log import logger

WORKER = Path(__file__).with_name("compile_worker.py")
MIN_JOBS = 2  # below this a worker's start (about half a second) costs more than it saves
TIMEOUT_S = 900.0


@dataclass(frozen=True)
class CompileJob:
    """One kernel to compile: its module file and name (as the parent imports it), function name,
    argument kinds (``a:<dtype>`` flat array, ``s:<dtype>`` scalar), and a cost for balancing."""

    path: str
    module: str
    function: str
    args: tuple[str, ...]
    cost: int = 1


def worker_count(jobs: int) -> int:
    """Processes to use for ``jobs`` kernels: ``LAMINA_COMPILE_WORKERS``, else one per core."""
    wanted = os.environ.get("LAMINA_COMPILE_WORKERS")
    try:
        n = int(wanted) if wanted is not None else (os.cpu_count() or 1)
    except ValueError:
        raise ValueError(f"LAMINA_COMPILE_WORKERS must be a whole number of processes, got {wanted!r}") from None
    return max(0, min(n, jobs))


def compile_in_workers(jobs: Sequence[CompileJob]) -> int:
    """Compile ``jobs`` in worker processes; the number they compiled (0 when not worth it)."""
    workers = worker_count(len(jobs))
    if workers < 2 or len(jobs) < MIN_JOBS or os.environ.get("NUMBA_DISABLE_CACHE"):
        return 0
    shares: list[list[CompileJob]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for job in sorted(jobs, key=lambda j: -j.cost):
        i = loads.index(min(loads))
        shares[i].append(job)
        loads[i] += job.cost
    running = [w for w in (_start(share) for share in shares if share) if w is not None]
    try:
        return sum(_collect(*w) for w in running)
    finally:  # interrupted: no worker outlives the call
        for proc, *_ in running:
            if proc.poll() is None:
                proc.kill()


def _start(share: list[CompileJob]) -> tuple[subprocess.Popen, Any, Any] | None:
    """A worker compiling ``share`` (its output and errors go to temporary files), or None when no
    process can be started."""
    out, errors = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    try:
        proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=out, stderr=errors,
                                text=True)
    except OSError as e:
        logger("compile").warning("could not start a kernel compile worker (%s); compiling on first call", e)
        out.close()
        errors.close()
        return None
    assert proc.stdin is not None
    proc.stdin.write(json.dumps([vars(j) for j in share]))
    proc.stdin.close()  # it runs while the next ones start
    return proc, out, errors


def _collect(proc: subprocess.Popen, out: Any, errors: Any) -> int:
    """How many kernels the worker compiled; its failures are logged."""
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        logger("compile").warning("a kernel compile worker ran over %.0f s; the rest compile on first call",
                                  TIMEOUT_S)
    out.seek(0)
    done = 0
    for line in out.read().splitlines():
        if line.startswith("ok "):
            done += 1
        elif line.startswith("failed "):
            logger("compile").warning("a compile worker could not compile %s; it compiles on first call",
                                      line[len("failed "):])
    if proc.returncode != 0:
        errors.seek(0)
        logger("compile").warning("a kernel compile worker failed (exit %s): %s", proc.returncode,
                                  errors.read().strip().splitlines()[-1:] or "no message")
    out.close()
    errors.close()
    return done
