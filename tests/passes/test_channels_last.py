"""channels-last: CNNs run on NHWC images between their convolutions, with the same outputs as eager."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lamina
from lamina.errors import LaminaError
from lamina.frontends.fx import import_module
from lamina.ir import interpret, parse, print_graph
from lamina.models import make_cnn
from lamina.passes.channels_last import channels_last
from tests.conftest import rel_error

F32_TOL = 1e-5  # float32; the NHWC kernels sum each window in the same order as the NCHW ones


class _Blocks(nn.Module):
    """What the vision models put between convolutions: a strided stem, batch norm, a max pool, a
    depthwise conv, 1x1 expansions, a residual add, squeeze-excite, a channel concat, a pad, a slice
    along the height, and reductions that keep or drop their axes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 7, stride=2, padding=3)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, stride=1, padding=1, groups=16)
        self.bn2 = nn.BatchNorm2d(16)
        self.expand = nn.Conv2d(16, 24, 1)
        self.shortcut = nn.Conv2d(16, 24, 1, stride=1)
        self.squeeze, self.excite = nn.Conv2d(24, 8, 1), nn.Conv2d(8, 24, 1)
        self.strided = nn.Conv2d(48, 32, 3, stride=2, padding=1, bias=False)
        self.head = nn.Linear(32 + 5, 10)
        for bn in (self.bn, self.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.bn(self.stem(x))))
        z = nn.functional.relu6(self.bn2(self.depthwise(y)))
        z = self.expand(z) + self.shortcut(y)
        z = z * torch.sigmoid(self.excite(torch.relu(self.squeeze(z.mean((2, 3), keepdim=True)))))
        z = torch.cat([z, nn.functional.pad(z, (1, 1, 1, 1))[:, :, 1:-1, 1:-1]], dim=1)
        z = self.strided(z)[:, :, 1:]
        pooled, by_channel = z.mean((2, 3)), z.amax(1).flatten(1)[:, :5]
        return self.head(torch.cat([pooled, by_channel], dim=1))


def _model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return _Blocks().eval(), (torch.randn(2, 3, 32, 32),)


def test_images_stay_nhwc_from_convolution_to_convolution() -> None:
    model, args = _model()
    graph = channels_last(lamina.trace(model, args))
    convs = [op for op in graph.walk() if op.name == "conv2d"]
    nchw = [op for op in convs if op.attrs["layout"] == "nchw"]
    assert len(convs) == 4 and len(nchw) == 2  # squeeze-excite's convs over [N, C, 1, 1] are the same either way
    assert all(tuple(op.operands[0].type.shape[2:]) == (1, 1) for op in nchw)
    # 1x1 convolutions over images are linear layers over pixels; the squeeze-excite ones stay NCHW
    assert sum(op.name == "linear" for op in graph.ops) == 3
    permutes = [op for op in graph.ops if op.name == "permute"]
    # the model's input into NHWC, and the last image back to NCHW where the slice and reductions need it
    assert len(permutes) <= 3, print_graph(graph)
    assert "batch_norm" not in {op.name for op in graph.ops}


@pytest.mark.parametrize("backend,language", [("cpu", "c"), ("cpu", "numba"), ("reference", None)])
def test_channels_last_matches_eager(backend: str, language: str | None) -> None:
    model, args = _model()
    with torch.no_grad():
        expected = model(*args)
        compiled = lamina.compile(model, args, backend=backend, poison=True, kernel_language=language,
                                  pipeline="channels-last,canonicalize,fuse")
        assert rel_error(compiled(*args), expected) <= F32_TOL
        other = torch.randn(2, 3, 32, 32)
        assert rel_error(compiled(other), model(other)) <= F32_TOL


def test_the_cpu_backend_runs_cnns_channels_last_by_default() -> None:
    model, args = _model()
    compiled = lamina.compile(model, args)
    assert "channels-last" in compiled.graph.history[1]
    assert any(op.attrs.get("layout") == "nhwc" for op in compiled.graph.walk() if op.name == "conv2d")
    with torch.no_grad():
        assert rel_error(compiled(*args), model(*args)) <= F32_TOL


def test_pass_is_pure_and_idempotent() -> None:
    model, args = _model()
    graph = lamina.trace(model, args)
    before = print_graph(graph)
    once = channels_last(graph)
    assert print_graph(graph) == before
    assert print_graph(channels_last(once)) == print_graph(once)


def test_images_come_back_nchw_in_memory_as_eager_gives_them() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = lamina.compile(model, (x,), poison=True)
    assert any(op.attrs.get("layout") == "nhwc" for op in compiled.graph.walk() if op.name == "conv2d")
    with torch.no_grad():
        got = compiled(x)
        assert got.is_contiguous() and rel_error(got, model(x)) <= F32_TOL


def test_a_graph_with_one_convolution_is_left_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(2))  # a ViT's patch embedding
    graph = lamina.trace(model.eval(), (torch.randn(1, 3, 16, 16),))
    assert print_graph(channels_last(graph)) == print_graph(graph)


def test_small_cnn_keeps_its_interpreter_outputs() -> None:
    model, args = make_cnn()
    imported = import_module(model, args, None)
    weights = {k: v.detach().numpy() for k, v in imported.weights.items()}
    inputs = [a.numpy() for a in args]
    (before,) = interpret(imported.graph, inputs, weights)
    (after,) = interpret(channels_last(imported.graph), inputs, weights)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 2), (2, 1, 1, 4)])
def test_nhwc_conv2d_reference_is_torchs_on_the_transposed_image(stride, padding, dilation, groups) -> None:
    x, w, b = torch.randn(2, 7, 9, 4), torch.randn(8, 4 // groups, 3, 3), torch.randn(8)
    expected = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), w, b, stride, padding, dilation, groups).permute(0, 2, 3, 1)
    shape = ",".join(str(d) for d in expected.shape)
    graph = parse(f"""graph @g(%x: f32[2,7,9,4], %w: f32[8,{4 // groups},3,3], %b: f32[8]) {{
      %0 = conv2d(%x, %w, %b) {{stride=[{stride}], padding=[{padding}], dilation=[{dilation}], groups={groups}, layout="nhwc"}} : f32[{shape}]
      return %0
    }}""")
    (got,) = interpret(graph, [x.numpy(), w.numpy(), b.numpy()], {})
    assert got.shape == tuple(expected.shape)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_an_unknown_layout_is_a_clear_error() -> None:
    with pytest.raises(LaminaError, match="layout must be one of nchw, nhwc, got 'nwhc'"):
        parse("""graph @g(%x: f32[1,4,4,3], %w: f32[2,3,1,1]) {
          %0 = conv2d(%x, %w) {stride=[1], padding=[0], dilation=[1], groups=1, layout="nwhc"} : f32[1,4,4,2]
          return %0
        }""")


def test_a_dynamic_batch_runs_channels_last() -> None:
    from torch.export import Dim

    model, (x,) = _model()
    compiled = lamina.compile(model, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},), poison=True)
    assert any(op.attrs.get("layout") == "nhwc" for op in compiled.graph.walk() if op.name == "conv2d")
    with torch.no_grad():
        for batch in (1, 3, 5):
            images = torch.randn(batch, 3, 32, 32)
            assert rel_error(compiled(images), model(images)) <= F32_TOL


def test_a_saved_frozen_cnn_keeps_its_channels_last_weights(tmp_path) -> None:
    model, args = _model()
    compiled = lamina.compile(model, args)
    path = tmp_path / "cnn.lamina"
    lamina.save(compiled, str(path), frozen=True)  # channels-last weight copies travel as buffers
    loaded = lamina.load(str(path))
    assert type(loaded).__name__ == "FrozenModule"  # thawed: no planning, the C library and the buffers
    with torch.no_grad():
        assert rel_error(loaded(*args), model(*args)) <= F32_TOL


def test_a_weight_changed_in_place_reaches_its_channels_last_copy() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1)).eval()
    x = torch.randn(2, 3, 8, 8)
    compiled = lamina.compile(model, (x,))
    with torch.no_grad():
        compiled(x)
        model[2].weight.mul_(2)  # its channels-last copy is a snapshot, refreshed on the version change
        assert rel_error(compiled(x), model(x)) <= F32_TOL
