"""Tensor parallelism on ``torch.distributed``: the process group lamina's collectives run on.

Under ``torchrun`` (one process per rank, ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set), ``init()`` joins the
default process group: gloo for CPU tensors, NCCL for CUDA ones. ``spawn(fn, world)`` starts ``world``
local processes on loopback instead (tests, benchmarks), runs ``fn(rank, world, *args)`` in each and
returns their results in rank order; a rank that fails or exceeds ``timeout`` fails the whole call with
its error, and the others are stopped instead of left waiting.
"""
from __future__ import annotations

import datetime
import os
import socket
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .runtime.collectives import DistributedError, check_group


def init(backend: str | None = None, timeout_s: float = 60.0) -> None:
    """Join the default process group from torchrun's environment (no-op when already joined)."""
    if dist.is_initialized():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(f"lamina.distributed needs a process group: run under torchrun (missing "
                               f"{', '.join(missing)}) or call torch.distributed.init_process_group first")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, fn: Callable[..., Any], args: Sequence[Any], results: Any,
            timeout_s: float, threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    try:
        init("gloo", timeout_s)
        results.put((rank, "ok", fn(rank, world, *args)))
    except BaseException as e:  # reported to the parent, which fails the call with it
        results.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable[..., Any], world: int, *args: Any, timeout_s: float = 120.0, threads: int = 1) -> list[Any]:
    """``fn(rank, world, *args)`` in ``world`` local processes joined by a gloo group on loopback; their
    results (picklable) in rank order. ``fn`` must be importable (a module-level function)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    procs = [context.Process(target=_worker, args=(r, world, port, fn, args, results, timeout_s, threads))
             for r in range(world)]
    for p in procs:
        p.start()
    found: dict[int, Any] = {}
    try:
        for _ in range(world):
            try:
                rank, status, value = results.get(timeout=timeout_s)
            except Exception:  # queue.Empty: someone hangs
                raise DistributedError(f"ranks {sorted(set(range(world)) - set(found))} gave no result within "
                                       f"{timeout_s:g} s") from None
            if status == "error":
                raise DistributedError(f"rank {rank} of {world} failed: {value}")
            found[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return [found[r] for r in range(world)]


def compile(model: torch.nn.Module, example_inputs: Any, *, tp: int | None = None, pipeline: str | None = None,
            backend: str = "cpu", **options: Any) -> Any:
    """``lamina.compile`` for this rank of a tensor-parallel group (``shard{tp=...}``, ``passes/shard.py``): the
    model is traced and sharded alike on every rank; this rank keeps only its part of each split weight.
    Call it on every rank of an initialised process group (``init()`` under torchrun); ``tp`` defaults to
    the group's size and must equal it. ``pipeline`` without a shard pass gets one before its last pass."""
    from .api import compile as compile_one
    from .passes.manager import default_pipeline

    init()
    world = dist.get_world_size()
    tp = world if tp is None else tp
    if tp != world:
        raise DistributedError(f"lamina.distributed.compile: tp={tp} but the process group has {world} ranks; "
                               f"launch tp processes (torchrun --nproc-per-node={tp}) or pass tp={world}")
    pipeline = sharded_pipeline(pipeline or default_pipeline(backend), tp)
    seen: list[Any] = [None] * world
    dist.all_gather_object(seen, pipeline)
    if len(set(seen)) != 1:
        raise DistributedError(f"lamina.distributed.compile: the ranks compile different pipelines ({seen}); every "
                               "rank must run the same one")
    return compile_one(model, example_inputs, pipeline=pipeline, backend=backend, fallback=False, **options)


def sharded_pipeline(pipeline: str, tp: int) -> str:
    """``pipeline`` with ``shard{tp=...}`` before its last pass, unless it has a shard pass already."""
    steps = pipeline.split(",")
    if not any(s.strip().startswith("shard") for s in steps):
        steps.insert(max(len(steps) - 1, 1), f"shard{{tp={tp}}}")
    return ",".join(steps)


def this_rank(graph_name: str, tp: int) -> int:
    """This process's rank in the group a graph sharded for ``tp`` ranks runs on (a clear error without one)."""
    return check_group(tp, f"graph @{graph_name}")
