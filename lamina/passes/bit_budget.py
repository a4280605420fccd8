"""Per-layer bits under a budget: which linear layers get 8-bit, 4-bit or stay float.

A greedy knapsack over the layers' options (ordered by bits per weight): every
layer starts at its smallest format, then the upgrade with the largest estimated loss removed per
extra bit is taken, again and again, while the budget (average bits per weight over the layers)
allows. ``rank`` changes the order for comparisons: ``score`` (the estimated losses, the default),
``reversed`` (the layers the scores call least sensitive upgraded first: the ablation of the
Layer-Wise Quantization paper) and ``position`` (layers in model order, no scores).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..ir.quant_format import QuantFormat

RANKS = ("score", "reversed", "position")


@dataclass(frozen=True)
class Option:
    """One way to store a layer: ``fmt`` (None: float32), bits per weight, estimated loss."""

    fmt: QuantFormat | None
    bits: float
    loss: float


@dataclass(frozen=True)
class Candidate:
    """A layer that may be quantized: its weight key, weight count and options (any order)."""

    key: str
    weights: int
    options: tuple[Option, ...]

    def ordered(self) -> list[Option]:
        return sorted(self.options, key=lambda o: o.bits)


class BudgetError(ValueError):
    """A budget no assignment meets."""


def assign(candidates: Sequence[Candidate], budget: float, rank: str = "score") -> dict[str, Option]:
    """The option chosen for each layer so that the average bits per weight stay within ``budget``."""
    total = sum(c.weights for c in candidates)
    chosen = {c.key: c.ordered()[0] for c in candidates}
    used = sum(chosen[c.key].bits * c.weights for c in candidates)
    least = used / total
    if least > budget + 1e-9:
        raise BudgetError(f"budget={budget:g} is below the minimum of {least:.3f} bits per weight (every selected "
                          "layer at its smallest format); raise the budget or quantize more layers")
    allowed = budget * total
    order = {c.key: i for i, c in enumerate(candidates)}
    while True:
        best = None
        for c in candidates:
            now = chosen[c.key]
            for option in c.ordered():
                extra = (option.bits - now.bits) * c.weights
                if extra <= 0 or used + extra > allowed + 1e-6:
                    continue
                gain = (now.loss - option.loss) / extra
                merit = {"score": gain, "reversed": -gain, "position": -order[c.key] - option.bits / 1e3}[rank]
                if best is None or merit > best[0]:
                    best = (merit, c, option, extra)
        if best is None:
            return chosen
        _, c, option, extra = best
        chosen[c.key] = option
        used += extra
