"""SNLP training utilities: Identity-Newton forward passes in PyTorch and the SNLP-aware regularizer.

A residual stack ``h[l+1] = h[l] + f_l(h[l])`` is what the ``newton`` pass parallelises; with few
iterations (K < layers) its output only approximates the sequential one. Training with
``SNLPRegularizer`` pulls the K-iteration Newton output toward the sequential output, so that
K = 1 or 2 becomes usable at inference (the SNLP paper's claim; ``benchmarks/snlp_experiment.py``
measures it). Everything here is plain autograd, usable in any training loop::

    logits = model(idx)
    deltas = residual_deltas(model.h, lambda block, x: block(x)[0])
    loss = cross_entropy(logits, targets) + reg(deltas, model.embed(idx), model.head, logits)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

Delta = Callable[[torch.Tensor], torch.Tensor]


def residual_deltas(blocks: Sequence[torch.nn.Module],
                    call: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None) -> list[Delta]:
    """Per block, ``f(h) = block(h) - h`` (``call(block, h)`` gives the block's output; default ``block(h)``)."""
    run = call or (lambda block, h: block(h))
    return [lambda h, b=b: run(b, h) - h for b in blocks]


def newton_forward(deltas: Sequence[Delta], h: torch.Tensor, iters: int, chunk: int = 0) -> torch.Tensor:
    """h[L] by ``iters`` Identity-Newton iterations per chunk of ``chunk`` layers (0: all), as the
    ``newton`` op computes it: every f_j at the current inputs, then a prefix sum. iters >= chunk
    gives the sequential result."""
    if iters < 1 or chunk < 0:
        raise ValueError(f"newton_forward needs iters >= 1 and chunk >= 0, got iters={iters}, chunk={chunk}")
    size = chunk or len(deltas)
    for start in range(0, len(deltas), size):
        fs = deltas[start:start + size]
        inputs = [h] * len(fs)
        for _ in range(min(iters, len(fs))):
            outs = [f(x) for f, x in zip(fs, inputs)]
            inputs, total = [h], h
            for delta in outs:
                total = total + delta
                inputs.append(total)
        h = total
    return h


@dataclass(frozen=True)
class SNLPRegularizer:
    """``weight`` x the mean over ``iters`` of KL(sequential || K-iteration Newton) of the next-token
    distributions, per token; the sequential logits are the teacher (no gradient flows into them)."""

    iters: tuple[int, ...] = (1, 2)
    chunk: int = 0
    weight: float = 1.0

    def __call__(self, deltas: Sequence[Delta], h0: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                 sequential_logits: torch.Tensor) -> torch.Tensor:
        teacher = F.log_softmax(sequential_logits.detach().flatten(0, -2), -1)
        total = sequential_logits.new_zeros(())
        for k in self.iters:
            student = F.log_softmax(head(newton_forward(deltas, h0, k, self.chunk)).flatten(0, -2), -1)
            total = total + F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return self.weight * total / len(self.iters)
