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


def test_a_slice_bounded_only_by_torchs_guards_runs_in_pytorch_with_the_reason() -> None:
    """``table[:T]`` of a 48-row buffer, T dynamic: torch sizes it T (its guards know T <= 48), lamina's
    sizes would say min(T, 48); the slice is refused with that reason and runs in PyTorch, and the
    rest of the graph in lamina, right for every T."""
    from lamina.dynamo import LaminaBackend

    class SlicesABuffer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.randn(48, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.table[: x.shape[0]] * x

    model, backend = SlicesABuffer(), LaminaBackend()
    compiled = torch.compile(model, backend=backend, dynamic=True)
    with torch.no_grad():
        for t in (5, 9, 30):
            x = torch.randn(t, 8)
            torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    assert backend.stats.partitioned_graphs == 1
    assert "torch's guards bound" in backend.stats.fallback_ops[0] and "aten.slice.Tensor" in backend.stats.fallback_ops[0]
