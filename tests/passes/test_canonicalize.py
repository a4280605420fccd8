"""canonicalize on real models (its golden IR cases: golden/canonicalize.lamina, run by test_golden.py)."""
from __future__ import annotations

import numpy as np
import pytest

import lamina
from lamina.frontends.fx import import_module
from lamina.ir import interpret, parse, print_graph
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp
from lamina.models.hf import make_hf_gpt2, make_hf_llama
from lamina.passes.canonicalize import canonicalize

def test_canonicalize_is_idempotent_and_pure() -> None:
    model, args, kwargs = make_hf_gpt2()
    graph = lamina.trace(model, args, kwargs)
    before = print_graph(graph)
    once = canonicalize(graph)
    assert print_graph(graph) == before  # the input graph is untouched
    assert print_graph(canonicalize(once)) == print_graph(once)
    assert len(once.ops) < len(graph.ops)


@pytest.mark.parametrize("factory", [make_mlp, make_gpt2_stack, make_llama_block, make_cnn, make_hf_gpt2, make_hf_llama])
def test_canonicalize_preserves_model_outputs(factory) -> None:
    model, args, *kwargs = factory()
    imported = import_module(model, args, kwargs[0] if kwargs else None)
    weights = {k: v.numpy() for k, v in imported.weights.items()}
    inputs = [a.numpy() for a in args]
    after = canonicalize(imported.graph)
    for a, b in zip(interpret(imported.graph, inputs, weights), interpret(after, inputs, weights)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_folding_keeps_nan_and_inf() -> None:
    graph = parse("""graph @g(%x: f32[2]) {
      %0 = full() {shape=[], value=0.0, dtype=f32} : f32[]
      %1 = div(%0, %0) : f32[]
      %2 = log(%0) : f32[]
      %3 = add(%x, %1) : f32[2]
      %4 = add(%3, %2) : f32[2]
      return %4
    }""")
    text = print_graph(canonicalize(graph))
    assert "value=nan" in text and "value=-inf" in text
    out = interpret(canonicalize(graph), [np.ones(2, np.float32)])[0]
    assert np.isnan(out).all()


class _Conv(__import__("torch").nn.Module):
    def __init__(self, conv) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x).relu()


@pytest.mark.parametrize("options", [
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),
    dict(in_channels=6, out_channels=6, kernel_size=3, stride=2, padding=1, groups=6, bias=False),
    dict(in_channels=6, out_channels=6, kernel_size=3, dilation=2, padding=2, groups=6),
    dict(in_channels=6, out_channels=6, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1), groups=6),
    dict(in_channels=6, out_channels=6, kernel_size=1, groups=6),
    dict(in_channels=6, out_channels=10, kernel_size=1),
    dict(in_channels=6, out_channels=10, kernel_size=1, bias=False),
], ids=["3x3", "stride2", "dilated", "1x3", "depthwise1x1", "pointwise", "pointwise_nobias"])
def test_pointwise_and_depthwise_convs_are_rewritten_and_compute_the_same(options) -> None:
    """1x1 convolutions become a matmul, depthwise ones a sum of shifted slices; the cpu backend (poisoned
    outputs) matches torch's convolution on a shape with odd sizes."""
    import torch

    torch.manual_seed(0)
    model = _Conv(torch.nn.Conv2d(**options)).eval()
    x = torch.randn(2, 6, 9, 7)
    compiled = lamina.compile(model, (x,), poison=True)
    assert not any(op.name == "conv2d" for op in compiled.graph.ops)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_a_pointwise_conv_over_one_pixel_is_a_linear_layer(bias: bool) -> None:
    """Squeeze-excite's 1x1 convolutions over [N, C, 1, 1]: one linear over the batch (the weight read
    once), the same numbers as torch's convolution with poisoned outputs."""
    import torch

    torch.manual_seed(1)
    model = _Conv(torch.nn.Conv2d(24, 40, 1, bias=bias)).eval()
    x = torch.randn(8, 24, 1, 1)
    compiled = lamina.compile(model, (x,), poison=True)
    assert [op.name for op in compiled.graph.ops if op.name in ("conv2d", "matmul", "linear")] == ["linear"]
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_wide_depthwise_and_grouped_convs_stay_convolutions() -> None:
    import torch

    for conv in (torch.nn.Conv2d(4, 4, 5, padding=2, groups=4), torch.nn.Conv2d(4, 8, 3, groups=2),
                 torch.nn.Conv2d(4, 8, 1, stride=2)):
        graph = canonicalize(lamina.trace(_Conv(conv).eval(), (torch.randn(1, 4, 8, 8),)))
        assert [op.name for op in graph.ops if op.name in ("conv2d", "matmul")] == ["conv2d"]


@pytest.mark.parametrize("options", [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=2),
    dict(kernel_size=(3, 2), stride=1, padding=1, dilation=2),
], ids=["resnet_stem", "ceil_mode", "ceil_mode_unpadded", "2x2", "dilated"])
def test_max_pools_become_a_window_maximum_that_propagates_nan(options) -> None:
    """Up to 3x3 taps a max pool is a maximum of shifted slices padded with -inf; the cpu backend (poisoned
    outputs) matches torch's max pool exactly, NaN included, on odd sizes (where ceil_mode adds a window)."""
    import torch

    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(**options))
    x = torch.randn(2, 5, 9, 8)
    x[1, 2, 4, 4] = float("nan")
    compiled = lamina.compile(model, (x,), poison=True)
    assert not any(op.name == "max_pool2d" for op in compiled.graph.ops)
    got, want = compiled(x), model(x)
    assert got.shape == want.shape and torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_wide_and_integer_max_pools_stay_library_calls() -> None:
    import torch

    for pool, dtype in ((torch.nn.MaxPool2d(5, padding=2), torch.float32), (torch.nn.MaxPool2d(3), torch.int32)):
        x = torch.randn(1, 4, 10, 10).to(dtype)
        graph = canonicalize(lamina.trace(pool, (x,)))
        assert [op.name for op in graph.ops] == ["max_pool2d"]
