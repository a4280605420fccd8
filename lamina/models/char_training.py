"""Offline character-level data and a training loop for ``CharGPT`` (the SNLP experiment and tests).

The corpus is the Python standard library's own source (always on disk; or its reference
documentation, ``docs_corpus``), characters mapped to 96 symbols: printable ASCII and newline. ``train`` runs AdamW with an optional
``SNLPRegularizer``; ``perplexity`` evaluates sequentially or with K Newton iterations.
"""
from __future__ import annotations

import math
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from ..snlp import SNLPRegularizer, newton_forward, residual_deltas
from .char_gpt import CharGPT

VOCAB = 96  # chr(32)..chr(126) -> 0..94, newline -> 95


def stdlib_corpus(chars: int, skip: int = 0) -> str:
    """``chars`` characters of the standard library's ``.py`` files in sorted order, after ``skip``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, total = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        out.append(text)
        total += len(text)
        if total >= chars + skip:
            break
    return "".join(out)[skip: skip + chars]


def docs_corpus(chars: int, skip: int = 0) -> str:
    """``chars`` characters of Python's reference documentation (``pydoc_data.topics``: English prose with
    some code, about 465 thousand characters, always on disk), topics in sorted order, after ``skip``."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[name] for name in sorted(topics))
    if skip + chars > len(text):
        raise ValueError(f"docs_corpus: {skip} + {chars} characters asked, the documentation has {len(text)}")
    return text[skip: skip + chars]


def encode(text: str) -> torch.Tensor:
    codes = [95 if c == "\n" else ord(c) - 32 for c in text.replace("\t", "    ") if c == "\n" or 32 <= ord(c) < 127]
    return torch.tensor(codes, dtype=torch.long)


def char_gpt_deltas(model: CharGPT) -> list:
    """The residual functions f_l(h) = block_l(h) - h of a CharGPT, for ``lamina.snlp``."""
    return residual_deltas(model.h, lambda block, h: block(h)[0])


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch: int = 16
    seq: int = 64
    lr: float = 3e-3
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    seconds: float
    final_loss: float


def train(model: CharGPT, data: torch.Tensor, config: TrainConfig,
          regularizer: SNLPRegularizer | None = None) -> TrainResult:
    """Next-character cross entropy (+ the regularizer) with AdamW and a cosine schedule."""
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=0.1)
    model.train()
    start, loss = time.perf_counter(), torch.zeros(())
    for _ in range(config.steps):
        at = torch.randint(0, len(data) - config.seq - 1, (config.batch,), generator=gen)
        x = torch.stack([data[i: i + config.seq] for i in at])
        y = torch.stack([data[i + 1: i + 1 + config.seq] for i in at])
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        total = loss
        if regularizer is not None:
            total = loss + regularizer(char_gpt_deltas(model), model.embed(x), model.head, logits)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    return TrainResult(time.perf_counter() - start, loss.detach().item())


@torch.no_grad()
def perplexity(model: CharGPT, data: torch.Tensor, seq: int = 64, iters: int | None = None, chunk: int = 0) -> float:
    """exp(mean next-character cross entropy) over consecutive windows of ``data``: sequential when
    ``iters`` is None, else with ``iters`` Newton iterations per chunk."""
    n = (len(data) - 1) // seq
    x = data[: n * seq].view(n, seq)
    y = data[1: n * seq + 1].view(n, seq)
    if iters is None:
        logits = model(x)
    else:
        logits = model.head(newton_forward(char_gpt_deltas(model), model.embed(x), iters, chunk))
    return math.exp(float(F.cross_entropy(logits.flatten(0, 1), y.flatten())))
