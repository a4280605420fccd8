"""Unsupported ops: every one listed with its module path, or the whole model falls back with a warning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.errors import UnsupportedOpsError


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(self.proj(x))


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = Odd()
        self.second = Odd()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.second(self.first(x))
        return self.head(torch.fft.fft(y).real)


def test_error_lists_every_unsupported_op_with_module_path() -> None:
    with pytest.raises(UnsupportedOpsError) as info:
        lamina.compile(Model().eval(), (torch.randn(2, 8),), fallback=False)
    ops = info.value.ops
    assert [(op.target, op.module) for op in ops] == [
        ("aten.special_bessel_j0.default", "first"),
        ("aten.special_bessel_j0.default", "second"),
        ("aten._fft_r2c.default", ""),
        ("aten.view_as_real.default", ""),
    ]
    message = str(info.value)
    assert message.startswith("Model uses 4 op(s) lamina does not support")
    assert "aten.special_bessel_j0.default in module first" in message
    assert "aten.special_bessel_j0.default in module second" in message
    assert "aten._fft_r2c.default in module <top level>" in message
    assert "`lamina ops`" in message


def test_fallback_runs_the_model_eagerly_with_a_warning() -> None:
    model = Model().eval()
    x = torch.randn(2, 8)
    with pytest.warns(RuntimeWarning, match="special_bessel_j0"):
        compiled = lamina.compile(model, (x,))
    assert torch.equal(compiled(x), model(x))


def test_training_dropout_is_reported_not_silently_dropped() -> None:
    from lamina.frontends.fx import import_module

    class Train(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.dropout(x, 0.5, training=True)

    with pytest.raises(UnsupportedOpsError):
        import_module(Train(), (torch.randn(4),))
