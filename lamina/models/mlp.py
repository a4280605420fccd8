"""A plain multi-layer perceptron."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...] = (64, 256, 256, 10)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.nn.functional.gelu(x)
        return x


def make_mlp(batch: int = 8, sizes: tuple[int, ...] = (64, 256, 256, 10), seed: int = 0) -> tuple[nn.Module, tuple]:
    torch.manual_seed(seed)
    return MLP(sizes).eval(), (torch.randn(batch, sizes[0]),)
