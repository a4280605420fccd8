"""The arena of values whose sizes change from call to call (a KV cache's length, a batch).

A plan generic in its size symbols keeps the values of fixed shape in its static arena, laid
out once. The others live here: laid out (``passes.memory``) for a capacity of each size symbol,
the next power of two of the sizes seen, and laid out again only when a call passes the
capacity, so a decode loop grows it a logarithmic number of times and never re-plans. Each
call's views are made from ``fit``'s buffer and offsets.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..passes.memory import Lifetime, plan_memory


def next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass
class GrowingArena:
    """``nbytes(sizes)``: the bytes of each value under the size symbols' values; ``spans``: each
    value's (first step, last step), as ``plan_memory`` takes them. When ``nondecreasing`` is false
    (a value may shrink as a size grows), the layout is redone whenever the sizes change."""

    nbytes: Callable[[tuple[int, ...]], tuple[int, ...]]
    spans: Sequence[tuple[int, int]]
    device: str
    nondecreasing: bool = True
    capacity: tuple[int, ...] | None = None
    buffer: torch.Tensor | None = None
    offsets: tuple[int, ...] = ()
    grows: int = 0

    def fit(self, sizes: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The buffer and the offsets of the values for a call with these sizes, grown if needed."""
        cap = self.capacity
        if cap is None or (any(s > c for s, c in zip(sizes, cap)) if self.nondecreasing else sizes != cap):
            self._grow(sizes)
        return self.buffer, self.offsets

    def _grow(self, sizes: tuple[int, ...]) -> None:
        if self.nondecreasing:
            old = self.capacity or (0,) * len(sizes)
            cap = tuple(max(c, next_power_of_two(s)) for s, c in zip(sizes, old))
        else:
            cap = tuple(sizes)
        lifetimes = [Lifetime(str(i), n, start, end) for i, (n, (start, end)) in enumerate(zip(self.nbytes(cap), self.spans))]
        memory = plan_memory(lifetimes)
        self.buffer = None  # release the old buffer before taking the new one
        self.buffer = torch.empty(max(memory.peak, 1), dtype=torch.uint8, device=self.device)
        self.offsets = tuple(memory.offsets[str(i)] for i in range(len(self.spans)))
        self.capacity = cap
        self.grows += 1

    @property
    def bytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel()
