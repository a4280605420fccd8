"""Liveness-based arena planning: no two live buffers overlap, and freed space is reused."""
from __future__ import annotations

import random

from lamina.passes.memory import ALIGN, Lifetime, plan_memory


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_random_lifetimes_never_overlap_while_live() -> None:
    rng = random.Random(0)
    for _ in range(200):
        lts = []
        for i in range(rng.randint(1, 30)):
            start = rng.randint(0, 40)
            lts.append(Lifetime(f"b{i}", rng.randint(1, 5000), start, start + rng.randint(0, 10)))
        plan = plan_memory(lts)
        assert plan.peak <= plan.naive
        for x in lts:
            for y in lts:
                if x is y or x.end < y.start or y.end < x.start:
                    continue
                ra = (plan.offsets[x.name], plan.offsets[x.name] + x.size)
                rb = (plan.offsets[y.name], plan.offsets[y.name] + y.size)
                assert not _overlap(ra, rb), (x, y)
        assert all(off % ALIGN == 0 for off in plan.offsets.values())


def test_a_chain_needs_two_buffers() -> None:
    lts = [Lifetime(f"b{i}", 1024, i, i + 1) for i in range(10)]
    plan = plan_memory(lts)
    assert plan.peak == 2 * 1024 and plan.naive == 10 * 1024
