"""The C grouped convolution of the cpu backend (``codegen/conv_c.py``): NHWC ``conv2d`` in groups of 16 or
more channels, an implicit GEMM on a weight packed once per plan. The backend picks it on AMD CPUs with
AVX-512 (``runtime/gemm_choice.py``); these tests force it on wherever the CPU has AVX-512.
Tolerance: float32, 1e-5 relative to the output's scale (another summation order than oneDNN's)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.conv_c import pack_weight
from lamina.runtime import native_cpu
from lamina.runtime.frozen import kernel_view
from tests.conftest import rel_error
from tests.runtime.conftest import C_GEMM, trained_norms

pytestmark = C_GEMM
TOL = 1e-5



@pytest.fixture(scope="module")
def conv_kernel():
    """The convolution as a ctypes function of its own library."""
    from lamina.codegen.conv_c import ARGUMENTS, NAME, conv_source
    from lamina.codegen.cpu_c import PRELUDE
    from lamina.runtime.native_kernels import NativeFunction, compiled_function

    return compiled_function(NativeFunction(NAME, ARGUMENTS, conv_source()), PRELUDE)


def test_the_packed_weight_is_tiles_of_32_output_channels_per_group() -> None:
    w = torch.randn(2 * 40, 3, 2, 5)
    packed = pack_weight(w, 2)
    assert packed.shape == (2, 2, 10, 3, 32)  # groups, tiles, taps, channels of the group, 32
    for g in range(2):
        for tap in range(10):
            assert torch.equal(packed[g, 0, tap], w[g * 40:g * 40 + 32].reshape(32, 3, 10)[:, :, tap].t())
            assert torch.equal(packed[g, 1, tap, :, :8], w[g * 40 + 32:g * 40 + 40].reshape(8, 3, 10)[:, :, tap].t())
    assert not packed[:, 1, :, :, 8:].any()


CASES = [  # batch, channels, height, groups, outputs per group, kernel, stride, padding, dilation, bias
    (2, 128, 9, 2, 64, 3, 1, 1, 1, True),  # RegNet's, with a partial last block of 6 pixels
    (1, 96, 7, 3, 40, 3, 2, 1, 1, False),  # a partial tile, stride 2
    (3, 64, 10, 4, 16, 5, 1, 2, 1, True),  # half a tile, a 5 x 5 window
    (1, 32, 11, 2, 70, 3, 2, 0, 2, True),  # dilated, no padding, three tiles
    (2, 48, 6, 1, 33, 1, 1, 0, 1, True),  # dense 1 x 1
    (1, 8, 5, 8, 1, 3, 1, 1, 1, False),  # depthwise: one channel per group
    (1, 20, 4, 1, 7, 3, 1, 3, 1, True),  # padding wider than half the window: whole rows of zeros
]


@pytest.mark.parametrize("n, c, h, groups, per_group, k, stride, pad, dil, bias", CASES)
def test_the_kernel_equals_torch(conv_kernel, n: int, c: int, h: int, groups: int, per_group: int, k: int, stride: int,
                                 pad: int, dil: int, bias: bool) -> None:
    """Every output written (poisoned with NaN before), and equal to torch's convolution: partial tiles and
    row blocks, strides, dilation, padding, every group."""
    torch.manual_seed(c + k)
    x, w = torch.randn(n, c, h, h + 1), torch.randn(groups * per_group, c // groups, k, k + 1)
    b = torch.randn(groups * per_group) if bias else None
    want = nn.functional.conv2d(x, w, b, stride, (pad, pad), dil, groups)
    oh, ow = want.shape[2:]
    image = x.permute(0, 2, 3, 1).contiguous()
    out = torch.full((n, oh, ow, groups * per_group), float("nan"))
    packed = pack_weight(w, groups)
    conv_kernel(kernel_view(image), kernel_view(packed), kernel_view(b) if bias else None, kernel_view(out),
                n, h, h + 1, c, oh, ow, groups * per_group, k, k + 1, stride, stride, pad, pad, dil, dil, groups)
    assert not out.isnan().any()
    assert rel_error(out.permute(0, 3, 1, 2), want) <= TOL


class _GroupedBlock(nn.Module):
    """RegNet's bottleneck: 1 x 1, grouped 3 x 3 (stride 2), 1 x 1, each with a batch norm, and a grouped
    convolution straight on the input (an NCHW image, strided as NHWC: torch's convolution runs it)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(32, 32, 3, padding=1, groups=2)
        self.a = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=4, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(64, 48, 1, bias=False), nn.BatchNorm2d(48))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.c(self.b(self.a(self.first(x)))))


def _block() -> nn.Module:
    torch.manual_seed(3)
    return trained_norms(_GroupedBlock())


def test_grouped_convolutions_of_a_model_run_the_kernel_and_follow_weights_changed_in_place() -> None:
    model = _block()
    x = torch.randn(2, 32, 15, 15)
    compiled = lamina.compile(model, (x,), kernel_language="c", poison=True)
    assert native_cpu.CONV_NAME in compiled._executor.target.own
    source = compiled._executor.plan_for([x], compiled._weights).source
    assert source.count("torch.ops.aten.convolution") == 1  # torch's where the input is strided as NHWC
    with torch.no_grad():
        assert rel_error(compiled(x), model(x)) <= TOL  # an NCHW input: the first convolution is torch's
        last = x.contiguous(memory_format=torch.channels_last)  # dense as NHWC: every one is the kernel's
        assert rel_error(compiled(last), model(x)) <= TOL
        model.b[0].weight.mul_(-0.5)  # the packed weight is kept in step
        model.b[1].running_mean.add_(0.25)
        model.first.weight.add_(0.5)
        x = torch.randn(2, 32, 15, 15)
        for image in (x, x.contiguous(memory_format=torch.channels_last)):
            assert rel_error(compiled(image), model(x)) <= TOL


def test_a_frozen_module_carries_the_convolution(tmp_path) -> None:
    model = _block()
    x = torch.randn(1, 32, 15, 15)
    path = tmp_path / "grouped.lamina"
    lamina.save(lamina.compile(model, (x,), kernel_language="c"), path, frozen=True)
    loaded = lamina.load(path)
    assert any(f.name == native_cpu.CONV_NAME for f in loaded._frozen_plan.functions)
    with torch.no_grad():
        assert rel_error(loaded(x), model(x)) <= TOL
