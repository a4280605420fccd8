"""qlinear on the cpu backend (runtime/qlinear_cpu.py) against the interpreter, with poisoned buffers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lamina
from lamina.ir.interpreter import interpret
from lamina.runtime import qlinear_cpu


class Layer(nn.Module):
    def __init__(self, k: int, n: int, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(k, n, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 1.0  # a consumer kernel, so qlinear writes an arena buffer


def _check(model: nn.Module, x: torch.Tensor, pipeline: str, **options: object) -> lamina.CompiledModule:
    """Compile with poisoned buffers and compare with the interpreter; the compiled module, for more checks."""
    compiled = lamina.compile(model, (x,), pipeline=pipeline, poison=True, **options)
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    (want,) = interpret(compiled.graph, [x.numpy()], params)
    with torch.no_grad():
        got = compiled(x)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    return compiled


FORMATS = [f"bits={b},group={g},scheme={s}" for b in (8, 4) for s in ("sym", "asym") for g in (0, 32, 64, 128)]


@pytest.mark.parametrize("rows", [1, 3, 40], ids=lambda r: f"rows{r}")
@pytest.mark.parametrize("fmt", FORMATS)
def test_kernels_match_the_interpreter(fmt: str, rows: int) -> None:
    torch.manual_seed(0)
    _check(Layer(128, 37), torch.randn(rows, 128), f"quantize{{{fmt},keep=none}},fuse")


def test_odd_sizes_per_channel_int8() -> None:
    torch.manual_seed(1)
    _check(Layer(99, 5, bias=False), torch.randn(2, 3, 99), "quantize{bits=8,group=0,keep=none},fuse")


def test_the_blocked_path_covers_every_output_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qlinear_cpu, "DEQUANT_BLOCK_BYTES", 4 * 64 * 3)  # blocks of 3 channels: 37 = 12 * 3 + 1
    torch.manual_seed(2)
    _check(Layer(64, 37), torch.randn(20, 64), "quantize{bits=4,group=32,keep=none},fuse")


def test_one_plan_serves_decode_and_prefill_rows() -> None:
    from torch.export import Dim

    torch.manual_seed(3)
    model = Layer(64, 48)
    x = torch.randn(5, 64)
    compiled = lamina.compile(model, (x,), pipeline="quantize{bits=4,keep=none},fuse", poison=True,
                              dynamic_shapes=({0: Dim("rows")},))
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for rows in (1, 2, 17, 64, 1):
        x = torch.randn(rows, 64)
        (want,) = interpret(compiled.graph, [x.numpy()], params)
        with torch.no_grad():
            np.testing.assert_allclose(compiled(x).numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("act", ["none", "int8"])  # act=int8: the VNNI kernel where the CPU has one
def test_quantized_weights_follow_an_in_place_weight_update(act: str) -> None:
    torch.manual_seed(4)
    model = Layer(128, 16)
    x = torch.randn(1, 128)
    compiled = lamina.compile(model, (x,), pipeline=f"quantize{{bits=8,act={act},keep=none}},fuse")
    with torch.no_grad():
        before = compiled(x)
        model.fc.weight.mul_(2.0)  # the plan's packed weight is a snapshot: repacked on the next call
        after = compiled(x)
    bias = model.fc.bias.detach()
    torch.testing.assert_close(after - bias, 2 * (before - bias), rtol=1e-5, atol=1e-5)


def test_torch_compile_runs_the_quantize_pipeline() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).eval()
    x = torch.randn(4, 64)
    ref = lamina.compile(model, (x,), pipeline="quantize{bits=4,group=32,keep=none},fuse")
    compiled = torch.compile(model, backend="lamina", options={"pipeline": "quantize{bits=4,group=32,keep=none},fuse"})
    with torch.no_grad():
        got, want, exact = compiled(x), ref(x), model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - exact).abs().max() > 1e-4  # it did quantize


@pytest.mark.parametrize("rows", [1, 3, 40], ids=lambda r: f"rows{r}")
def test_w8a8_matches_the_interpreter(rows: int) -> None:
    torch.manual_seed(6)
    _check(Layer(128, 37), torch.randn(rows, 128), "quantize{bits=8,act=int8,keep=none},fuse")


def test_w8a8_is_integer_products_of_per_token_int8_activations() -> None:
    from lamina.ir.quant_format import QuantFormat, int8_product, quantize

    torch.manual_seed(7)
    x, w = torch.randn(5, 64), torch.randn(16, 64)
    qw, sw = quantize(w, QuantFormat(8, 0))
    xq = torch.round(x / (x.abs().amax(1, keepdim=True) / 127)).clamp(-127, 127)
    want = (xq.double() @ qw.double().t()) * (x.abs().amax(1, keepdim=True).double() / 127) * sw.double().t()
    torch.testing.assert_close(int8_product(x, qw, sw, None, QuantFormat(8, 0)), want.float(), rtol=1e-6, atol=1e-6)


def test_act_is_none_or_int8() -> None:
    from lamina.passes.quantize import QuantizeError

    with pytest.raises(QuantizeError, match="act="):
        lamina.compile(Layer(64, 8), (torch.randn(2, 64),), pipeline="quantize{bits=8,act=int4},fuse")


def test_a_weight_is_packed_once_per_plan_and_once_per_change(monkeypatch: pytest.MonkeyPatch) -> None:
    from lamina.ir import quant_format

    calls: list[int] = []
    original = quant_format.quantize
    monkeypatch.setattr(quant_format, "quantize", lambda *a: calls.append(1) or original(*a))
    model, x = Layer(64, 16), torch.randn(1, 64)
    compiled = lamina.compile(model, (x,), pipeline="quantize{bits=4,scheme=asym,keep=none},fuse")
    with torch.no_grad():
        compiled(x)
        compiled(x)
        assert len(calls) == 1  # three results (qweight, scales, zeros), one packing
        model.fc.weight.mul_(2.0)
        compiled(x)
    assert len(calls) == 2
