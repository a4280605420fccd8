"""Fused kernels whose operands are all weights or constants (a relative position bias gathered from its
table, a mask made from ``arange``) are computed once per plan by the interpreter, not compiled and
not run per call; an in-place update of a weight they read recomputes them."""
from __future__ import annotations

import torch
from torch import nn

import lamina


class BiasedAttentionScores(nn.Module):
    """Swin's pattern: ``table[index]`` (both fixed) reshaped into a per-head bias, plus a causal mask
    from ``arange``, added to scores computed from the input."""

    def __init__(self, heads: int = 3, window: int = 4) -> None:
        super().__init__()
        n = window * window
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        self.heads, self.n = heads, n

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        bias = self.table[self.index.view(-1)].view(self.n, self.n, self.heads).permute(2, 0, 1) * 2.0 + 1.0
        positions = torch.arange(self.n)
        mask = (positions[None, :] > positions[:, None]).float() * -1e4
        return torch.softmax(q @ k.transpose(-1, -2) + bias + mask, dim=-1)


def _compiled(batch: int, seed: int) -> tuple[BiasedAttentionScores, object, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = BiasedAttentionScores()
    q, k = torch.randn(batch, 3, 16, 8), torch.randn(batch, 3, 16, 8)
    return model, lamina.compile(model, (q, k), poison=True), q, k


def test_weight_only_kernels_are_hoisted_and_match_torch() -> None:
    model, compiled, q, k = _compiled(batch=2, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k), model(q, k), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(compiled(q, k), model(q, k), rtol=1e-5, atol=1e-5)  # the plan's second call
    executor = compiled._executor
    hoisted = [op for op in executor.graph.ops if id(op) in executor.hoisted_ops and op.name == "fused"]
    assert hoisted, "the bias and mask kernels should be computed once per plan"
    assert not any(id(op) in executor.kernels for op in hoisted)  # never compiled


def test_an_in_place_update_of_the_table_recomputes_the_hoisted_bias() -> None:
    model, compiled, q, k = _compiled(batch=1, seed=1)
    with torch.no_grad():
        compiled(q, k)
        model.table.mul_(-3.0).add_(0.5)
        torch.testing.assert_close(compiled(q, k), model(q, k), rtol=1e-5, atol=1e-5)
