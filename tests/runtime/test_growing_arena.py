"""The arena of values whose size changes per call: laid out for power-of-two capacities, grown rarely."""
from __future__ import annotations

from lamina.runtime.growing_arena import GrowingArena, next_power_of_two


def test_it_grows_only_when_a_size_passes_its_capacity() -> None:
    arena = GrowingArena(lambda s: (4 * s[0], 8 * s[0] * s[1]), [(0, 1), (1, 2)], "cpu")
    seen = []
    for t in range(1, 40):
        buffer, offsets = arena.fit((t, 3))
        assert len(offsets) == 2 and buffer.numel() >= max(o for o in offsets) + 8 * t * 3
        seen.append(arena.capacity)
    assert arena.grows == 7 and arena.capacity == (64, 4)  # 1, 2, 4, 8, 16, 32, 64
    arena.fit((5, 3))
    assert arena.grows == 7 and arena.capacity == (64, 4)  # shorter calls fit the larger layout


def test_values_that_may_shrink_are_laid_out_for_each_new_set_of_sizes() -> None:
    arena = GrowingArena(lambda s: (4 * (100 - s[0]),), [(0, 1)], "cpu", nondecreasing=False)
    arena.fit((10,))
    arena.fit((10,))
    arena.fit((20,))
    assert arena.grows == 2 and arena.capacity == (20,) and arena.bytes >= 320


def test_next_power_of_two() -> None:
    assert [next_power_of_two(n) for n in (1, 2, 3, 4, 5, 63, 64, 65)] == [1, 2, 4, 4, 8, 64, 64, 128]
