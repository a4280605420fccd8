"""lamina.calibrate and the bit budget: statistics, the disk cache, per-layer choices and their errors."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import lamina
from lamina import calibration as calibrate_module
from lamina.ir.interpreter import interpret
from lamina.ir.quant_format import QuantFormat
from lamina.passes.bit_budget import BudgetError, Candidate, Option, assign
from lamina.passes.quantize import QuantizeError


class Stack(nn.Module):
    """Three residual MLP blocks; the middle one is nearly the identity (a small update)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)) for _ in range(3))
        with torch.no_grad():
            self.blocks[1][2].weight.mul_(0.01)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class Residual(nn.Module):
    """Wraps a block so the ModuleList member's output has its input's shape (x + f(x))."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = Stack().eval()
    model.blocks = nn.ModuleList(Residual(b) for b in model.blocks)
    model.forward = lambda x: model.head(model.blocks[2](model.blocks[1](model.blocks[0](x))))  # type: ignore[method-assign]
    return model


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 64, generator=g) for _ in range(3)]


def test_statistics(tmp_path) -> None:
    cal = lamina.calibrate(_model(), _batches(), cache_dir=tmp_path, progress=False)
    assert set(cal.blocks) == {"blocks.0", "blocks.1", "blocks.2"}
    assert cal.blocks["blocks.1"].cosine > max(cal.blocks["blocks.0"].cosine, cal.blocks["blocks.2"].cosine)
    assert cal.importance("blocks.1.inner.0.weight") < cal.importance("blocks.0.inner.0.weight")
    stats = cal.linears["blocks.0.inner.0.weight"]
    assert (stats.out_features, stats.in_features) == (128, 64) and cal.tokens == 24
    e = stats.errors
    assert 0 < e["int8 per-channel sym"] < e["int4 g32 sym"] < e["int4 g64 sym"]
    assert "int4 g128 sym" not in e  # 64 inputs: a group of 128 does not fit
    assert cal.block_of("head.weight") is None and cal.importance("head.weight") > 0


def test_cached_on_disk_and_a_damaged_file_is_recomputed(tmp_path, monkeypatch, caplog) -> None:
    model, batches = _model(), _batches()
    first = lamina.calibrate(model, batches, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("*.json")
    monkeypatch.setattr(calibrate_module, "_measure", lambda *a: pytest.fail("should have read the cache"))
    assert lamina.calibrate(model, batches, cache_dir=tmp_path, progress=False) == first
    monkeypatch.undo()
    path.write_text(path.read_text()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        again = lamina.calibrate(model, batches, cache_dir=tmp_path, progress=False)
    assert again == first and "damaged" in caplog.text
    other = lamina.calibrate(model, batches[:2], cache_dir=tmp_path, progress=False)
    assert other.key != first.key  # other batches, another entry


def test_assign_prefers_the_largest_loss_per_bit() -> None:
    def layer(key: str, loss4: float, loss8: float) -> Candidate:
        return Candidate(key, 100, (Option(None, 32, 0.0), Option(QuantFormat(8, 0), 8, loss8),
                                    Option(QuantFormat(4, 32), 4, loss4)))

    layers = [layer("a", 1.0, 0.1), layer("b", 9.0, 0.5), layer("c", 3.0, 0.2)]
    assert {k: o.bits for k, o in assign(layers, 4.0).items()} == {"a": 4, "b": 4, "c": 4}
    assert {k: o.bits for k, o in assign(layers, 16 / 3).items()} == {"a": 4, "b": 8, "c": 4}
    assert {k: o.bits for k, o in assign(layers, 16 / 3, "reversed").items()} == {"a": 8, "b": 4, "c": 4}
    assert {k: o.bits for k, o in assign(layers, 16 / 3, "position").items()} == {"a": 8, "b": 4, "c": 4}
    assert all(o.fmt is None for o in assign(layers, 32.0).values())
    with pytest.raises(BudgetError, match="budget=3 is below the minimum of 4.000"):
        assign(layers, 3.0)


def test_budget_mixes_formats_and_runs(tmp_path) -> None:
    model, batches = _model(), _batches()
    cal = lamina.calibrate(model, batches, cache_dir=tmp_path, progress=False)
    x = batches[0]
    compiled = lamina.compile(model, (x,), pipeline="canonicalize,quantize{budget=6.0,keep=none},fuse",
                              calibration=cal, poison=True)
    rows = compiled.quantization
    bits = {r.weight: (r.fmt.bits if r.fmt else 32) for r in rows}
    sizes = {r.weight: cal.linears[r.weight].out_features * cal.linears[r.weight].in_features for r in rows}
    average = sum(bits[k] * sizes[k] for k in bits) / sum(sizes.values())
    assert 5.0 < average <= 6.0 and {4, 8} <= set(bits.values())
    assert all(r.score is not None for r in rows if r.fmt)
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    (want,) = interpret(compiled.graph, [x.numpy()], params)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("pipeline, words", [
    ("quantize{budget=5.0}", "needs calibration statistics"),
    ("quantize{budget=3.0,keep=none}", "budget=3 is below the minimum of 4.000 bits per weight"),
    ("quantize{budget=-1.0}", "budget=-1.0 must be positive"),
    ("quantize{budget=5.0,rank=random}", "rank='random' is not one of score, reversed, position"),
])
def test_budget_errors_name_the_option(tmp_path, pipeline: str, words: str) -> None:
    model, batches = _model(), _batches()
    cal = None if "calibration" in words else lamina.calibrate(model, batches, cache_dir=tmp_path, progress=False)
    with pytest.raises(QuantizeError, match=words):
        lamina.compile(model, (batches[0],), pipeline=pipeline, calibration=cal)
