"""Collectives at run time: ``torch.distributed`` on its default process group (gloo on CPUs, NCCL on GPUs).

The wrapper calls these helpers for the collective ops (``ir/ops/collective.py``); a ``*_start`` op returns
a ``Pending`` (the work ``torch.distributed`` runs asynchronously and the tensor it fills), which its
``wait`` op completes. A wait that times out raises (the process group's timeout: a rank that died).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ..ir.core import Op
from ..ir.ops.collective import KINDS
from ..ir.errors import LaminaError
from .library import Derived, library_call


class DistributedError(LaminaError, RuntimeError):
    """No process group, or not the one a program was sharded for; a rank that failed or timed out."""


CollectiveError = DistributedError  # a collective that failed: a rank died, or the timeout passed


# torch 2.13 names it reduce_scatter_single (reduce_scatter_tensor warns that it is deprecated)
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass
class SlowLink:
    """A simulated link of ``gbps`` GB/s: a collective is not done before its bytes could cross it (ring
    algorithms: an all-reduce sends 2 (N-1)/N of its bytes per rank, a gather or scatter (N-1)/N of the
    whole), after the bytes of the collectives started before it: collectives in flight together share
    the link, one after another. On one machine loopback is nearly free; this makes communication cost
    what it would."""

    gbps: float
    free_at: float = field(default=0.0, compare=False)  # perf_counter time when the link has carried all so far
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def seconds(self, kind: str, nbytes: int, world: int) -> float:
        share = 2 * (world - 1) / world if kind == "all_reduce" else (world - 1) / world
        return share * nbytes / (self.gbps * 1e9)

    def delivered_at(self, kind: str, nbytes: int, world: int, now: float) -> float:
        """When a collective started at ``now`` (perf_counter seconds) has crossed the link, queued behind
        the ones in flight."""
        with self._lock:
            self.free_at = max(now, self.free_at) + self.seconds(kind, nbytes, world)
            return self.free_at


@dataclass
class Pending:
    """A collective in flight: ``finish()`` waits for ``work`` (and the simulated link) and returns the result."""

    work: Any
    result: Callable[[], torch.Tensor]
    ready_at: float = 0.0  # perf_counter time before which a simulated slow link has not delivered
    operand: torch.Tensor | None = None  # the copy the collective reads, alive until it is done

    def finish(self) -> torch.Tensor:
        try:
            if self.work is not None:
                self.work.wait()
        except RuntimeError as e:  # gloo / NCCL: a peer closed the connection, or the timeout passed
            raise CollectiveError(f"a collective failed, most likely because another rank stopped: {e}") from e
        late = self.ready_at - time.perf_counter()
        if late > 0:
            time.sleep(late)
        return self.result()


def collective_kind(name: str) -> str:
    """How a timeline counts op ``name``: start, wait, collective (blocking) or compute."""
    if name == "wait":
        return "wait"
    if name.endswith("_start") and name.removesuffix("_start") in KINDS:
        return "start"
    return "collective" if name in KINDS else "compute"


def check_group(group: int, what: str = "this program") -> int:
    """This process's rank, in a process group of the ``group`` ranks ``what`` was sharded for (else an error)."""
    if not dist.is_available() or not dist.is_initialized():
        raise DistributedError(f"{what} is sharded for {group} ranks: run it in a torch.distributed process group "
                               "(lamina.distributed.compile under torchrun)")
    if dist.get_world_size() != group:
        raise DistributedError(f"{what} is sharded for {group} ranks, the process group has "
                               f"{dist.get_world_size()}; compile with tp={dist.get_world_size()}")
    return dist.get_rank()


def start(kind: str, x: torch.Tensor, group: int, axis: int = 0, link: SlowLink | None = None,
          waited_at_once: bool = False) -> Pending:
    """Start collective ``kind`` of ``x`` across the ``group`` ranks (see ``ir/ops/collective.py``).
    ``waited_at_once``: the caller finishes it before anything else runs (``run``)."""
    check_group(group)
    ready_at = link.delivered_at(kind, x.numel() * x.element_size() * (group if kind == "all_gather" else 1),
                                 group, time.perf_counter()) if link is not None else 0.0

    def operand(t: torch.Tensor) -> torch.Tensor:
        # torch.distributed reads it after this returns, and the plan may reuse its buffer for the next op's
        # result before the wait: a started collective works on a copy of its own, which the work keeps alive
        return t.contiguous() if waited_at_once else t.clone(memory_format=torch.contiguous_format)

    if kind == "all_reduce":
        out = x.clone(memory_format=torch.contiguous_format)  # reduced in place: always a copy
        return Pending(dist.all_reduce(out, async_op=True), lambda: out, ready_at)
    if kind == "all_gather":
        mine = operand(x)
        parts = [torch.empty_like(mine) for _ in range(group)]
        return Pending(dist.all_gather(parts, mine, async_op=True), lambda: torch.cat(parts, axis), ready_at, mine)
    # reduce_scatter: gloo and NCCL split dim 0, so the reduced axis goes first and comes back after
    front = operand(x.movedim(axis, 0))
    part = front.new_empty((front.shape[0] // group, *front.shape[1:]))
    return Pending(_reduce_scatter(part, front, async_op=True),
                   lambda: part.movedim(0, axis).contiguous(), ready_at, front)


def run(kind: str, x: torch.Tensor, group: int, axis: int = 0, link: SlowLink | None = None) -> torch.Tensor:
    """Collective ``kind`` of ``x``, waited for."""
    return start(kind, x, group, axis, link, waited_at_once=True).finish()


def _line(blocking: bool) -> Callable[..., str]:
    def line(op: Op, a: Sequence[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
        kind = op.name.removesuffix("_start")
        call = "run" if blocking else "start"
        return (f"{results[0]} = collectives.{call}({kind!r}, {a[0]}, {op.attrs['group']}, "
                f"{op.attrs.get('dim', 0)}, _link)")
    return line


for _kind in KINDS:
    library_call(_kind)(_line(True))
    library_call(f"{_kind}_start")(_line(False))


@library_call("rank_slice")
def _rank_slice(op: Op, a: Sequence[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    return f"{results[0]} = collectives.rank_slice({a[0]}, {op.attrs['group']}, {op.attrs['dim']})"


def rank_slice(x: torch.Tensor, group: int, axis: int) -> torch.Tensor:
    """This rank's part of ``x`` (every rank holds all of it)."""
    return x.chunk(group, axis)[check_group(group)].contiguous()


@library_call("wait")
def _wait(op: Op, a: Sequence[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    return f"{results[0]} = {a[0]}.finish()"
