"""Liveness-based buffer reuse: place each intermediate in one arena so freed space is reused."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ALIGN = 64


@dataclass(frozen=True)
class Lifetime:
    """A buffer of ``size`` bytes written at step ``start`` and last read at step ``end``."""

    name: str
    size: int
    start: int
    end: int


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[str, int]
    peak: int           # arena bytes: the most live at once after reuse
    naive: int          # bytes without reuse (every buffer its own allocation)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(lifetimes: Sequence[Lifetime]) -> MemoryPlan:
    """Greedy best-fit by start step: a buffer takes the smallest free block that fits, else grows the arena."""
    blocks: list[tuple[int, int]] = []          # free (offset, size)
    live: list[tuple[int, int, int]] = []       # (end, offset, size)
    offsets: dict[str, int] = {}
    top = 0
    for lt in sorted(lifetimes, key=lambda t: (t.start, -t.size)):
        for item in [x for x in live if x[0] < lt.start]:
            live.remove(item)
            blocks.append((item[1], item[2]))
        blocks = _coalesce(blocks)
        size = _aligned(max(lt.size, 1))
        fits = [b for b in blocks if b[1] >= size]
        if fits:
            offset, block = min(fits, key=lambda b: b[1])
            blocks.remove((offset, block))
            if block > size:
                blocks.append((offset + size, block - size))
        elif blocks and blocks[-1][0] + blocks[-1][1] == top:
            offset = blocks.pop()[0]   # extend the free block at the top of the arena
            top = offset + size
        else:
            offset, top = top, top + size
        offsets[lt.name] = offset
        live.append((lt.end, offset, size))
    return MemoryPlan(offsets, top, sum(_aligned(max(t.size, 1)) for t in lifetimes))


def _coalesce(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for off, size in sorted(blocks):
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + size)
        else:
            merged.append((off, size))
    return merged
