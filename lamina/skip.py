"""Training for layer skipping: ``LayerDropRegularizer``, LayerSkip's recipe (Elhoushi et al. 2024) for a plain loop.

A model trained with it keeps working when blocks are removed (``skip{...}``) and drafts well for
self-speculative decoding (``lamina.generate``):

- **layer dropout rising with depth**: in training mode each block is skipped (its output replaced by
  its input) for each sequence of the batch with probability ``max_drop * l / (L - 1)``: 0 for the
  first block, ``max_drop`` for the last;
- **early-exit loss**: the hidden state after every block but the last goes through the model's own
  final norm and LM head (``head``), and its next-token cross entropy is added with weights rising
  with depth (summing to ``exit_weight``), so intermediate states learn to be read by the shared head.

Usage::

    reg = LayerDropRegularizer(model.model.layers, lambda h: model.lm_head(model.model.norm(h)))
    with reg:                                   # installs the hooks; removed on exit
        for x, y in batches:
            logits = model(x).logits
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten()) + reg.loss(y)
            ...

Outside training mode (``model.eval()``) the hooks change nothing and record nothing.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .errors import LaminaError


class LayerDropError(LaminaError, ValueError):
    """Bad options for LayerDropRegularizer."""


@dataclass
class LayerDropRegularizer:
    """Layer dropout rising with depth plus an early-exit loss through the shared head; see the module doc."""

    blocks: nn.ModuleList
    head: Callable[[torch.Tensor], torch.Tensor]
    max_drop: float = 0.2
    exit_weight: float = 0.2
    seed: int = 0
    hidden: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    handles: list[Any] = field(default_factory=list, init=False, repr=False)
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.blocks) < 2:
            raise LayerDropError(f"LayerDropRegularizer: needs at least 2 blocks, got {len(self.blocks)}")
        if not 0.0 <= self.max_drop < 1.0:
            raise LayerDropError(f"LayerDropRegularizer: max_drop={self.max_drop} must be in [0, 1)")
        if self.exit_weight < 0:
            raise LayerDropError(f"LayerDropRegularizer: exit_weight={self.exit_weight} must be at least 0")
        self.generator = torch.Generator().manual_seed(self.seed)

    def drop_rate(self, index: int) -> float:
        return self.max_drop * index / (len(self.blocks) - 1)

    def __enter__(self) -> "LayerDropRegularizer":
        for i, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.hidden.clear()

    def _hook(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if not module.training:
                return None
            if index == 0:
                self.hidden.clear()  # a new forward
            out = output[0] if isinstance(output, tuple) else output
            rate = self.drop_rate(index)
            if rate > 0:
                keep = torch.rand(out.shape[0], generator=self.generator) >= rate
                out = torch.where(keep.reshape(-1, *([1] * (out.dim() - 1))).to(out.device), out, args[0])
            if index < len(self.blocks) - 1:
                self.hidden.append(out)
            return (out, *output[1:]) if isinstance(output, tuple) else out

        return hook

    def loss(self, targets: torch.Tensor) -> torch.Tensor:
        """The early-exit loss of the last training forward: ``exit_weight`` x the depth-weighted mean of each
        intermediate state's next-token cross entropy against ``targets`` [batch, seq]."""
        if not self.hidden:
            raise LayerDropError("LayerDropRegularizer.loss: no training forward recorded; run the model in "
                                 "training mode inside `with regularizer:` first")
        weights = torch.arange(1, len(self.hidden) + 1, dtype=torch.float32)
        weights = weights / weights.sum()
        total = self.hidden[0].new_zeros(())
        for w, h in zip(weights, self.hidden):
            logits = self.head(h)
            total = total + w * F.cross_entropy(logits.flatten(0, -2), targets.flatten())
        self.hidden.clear()
        return self.exit_weight * total
