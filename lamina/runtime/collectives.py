"""Collectives at run time: ``torch.distributed`` on its default process group (gloo on CPUs, NCCL on GPUs).

The wrapper calls these helpers for the collective ops (``ir/ops/collective.py``); a ``*_start`` op returns
a ``Pending`` (the work ``torch.distributed`` runs asynchronously and the tensor it fills), which its
``wait`` op completes. A wait that times out raises (the process group's timeout: a rank that died).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..ir.core import Op
from ..ir.errors import LaminaError
from .library import Derived, library_call


class CollectiveError(LaminaError, RuntimeError):
    """A collective without the process group it needs, or one that failed (a rank died, a timeout)."""


@dataclass
class Pending:
    """A collective in flight: ``finish()`` waits for ``work`` and returns the result."""

    work: Any
    result: Callable[[], torch.Tensor]

    def finish(self) -> torch.Tensor:
        try:
            if self.work is not None:
                self.work.wait()
        except RuntimeError as e:  # gloo / NCCL: a peer closed the connection, or the timeout passed
            raise CollectiveError(f"a collective failed, most likely because another rank stopped: {e}") from e
        return self.result()


def _check(group: int) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise CollectiveError(f"this program was sharded for {group} ranks and needs torch.distributed: run it "
                              "under torchrun (lamina.distributed.compile initialises the process group)")
    if dist.get_world_size() != group:
        raise CollectiveError(f"this program was sharded for {group} ranks, the process group has "
                              f"{dist.get_world_size()}; compile with tp={dist.get_world_size()}")


def start(kind: str, x: torch.Tensor, group: int, axis: int = 0) -> Pending:
    """Start collective ``kind`` of ``x`` across the ``group`` ranks (see ``ir/ops/collective.py``)."""
    _check(group)
    x = x.contiguous()
    if kind == "all_reduce":
        out = x.clone()
        return Pending(dist.all_reduce(out, async_op=True), lambda: out)
    if kind == "all_gather":
        parts = [torch.empty_like(x) for _ in range(group)]
        return Pending(dist.all_gather(parts, x, async_op=True), lambda: torch.cat(parts, axis))
    # reduce_scatter: the sum, then this rank's part (gloo has no reduce_scatter; the sum is the same)
    total = x.clone()
    rank = dist.get_rank()
    return Pending(dist.all_reduce(total, async_op=True),
                   lambda: total.chunk(group, axis)[rank].contiguous())


def run(kind: str, x: torch.Tensor, group: int, axis: int = 0) -> torch.Tensor:
    """Collective ``kind`` of ``x``, waited for."""
    return start(kind, x, group, axis).finish()


def _line(blocking: bool) -> Callable[..., str]:
    def line(op: Op, a: Sequence[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
        kind = op.name.removesuffix("_start")
        call = "run" if blocking else "start"
        return f"{results[0]} = collectives.{call}({kind!r}, {a[0]}, {op.attrs['group']}, {op.attrs.get('dim', 0)})"
    return line


for _kind in ("all_reduce", "reduce_scatter", "all_gather"):
    library_call(_kind)(_line(True))
    library_call(f"{_kind}_start")(_line(False))


@library_call("wait")
def _wait(op: Op, a: Sequence[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    return f"{results[0]} = {a[0]}.finish()"
