"""Ops users' models need (vision, audio, MoE, SSM families), each through lamina.compile against eager."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lamina

from tests.conftest import rel_error


class Fn(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.fn(*xs)


def _slice_assign(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = x.clone()
    z[:, 1:7:2] = y
    return z * 2


def _index_assign(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    z = x.clone()
    z[i] = 5.0
    return z + 1


def _copy_into(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(x)
    z.copy_(y)
    return z + x


def _shifted_windows(x: torch.Tensor) -> torch.Tensor:  # Swin's shift and window partition
    shifted = torch.roll(x, shifts=(-1, -1), dims=(1, 2))
    b, h, w, c = shifted.shape
    windows = shifted.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return windows.reshape(-1, 4, c).mean(1)


def _moe_route(logits: torch.Tensor) -> torch.Tensor:  # Mixtral's routing
    weights, experts = torch.topk(logits.softmax(-1), 2, dim=-1)
    order, perm = torch.sort(experts.reshape(-1))
    counts = torch.histc(order.float(), bins=4, min=0, max=3)
    return weights.sum(-1, keepdim=True) * counts.cumsum(0)[None, :] + perm[:4].float()


r = torch.randn
CASES: dict[str, tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = {
    "repeat": (lambda x: x.repeat(2, 1, 3) * 2, (r(3, 4),)),
    "repeat_interleave": (lambda x: x.repeat_interleave(3, dim=1) + 1, (r(2, 4),)),
    "pad": (lambda x: F.pad(x, (1, 2, 0, 3), value=-1.5) * 2, (r(2, 3, 4, 5),)),
    "pad_crop": (lambda x: F.pad(x, (-1, 2, 1, -2)) + 1, (r(2, 3, 5, 6),)),
    "slice_scatter": (_slice_assign, (r(3, 8), r(3, 3))),
    "index_put": (_index_assign, (r(6, 3), torch.tensor([4, 0, -1]))),
    "copy": (_copy_into, (r(3, 4), r(4))),
    "as_strided": (lambda x: torch.as_strided(x, (3, 3), (5, 2), 1) * 2, (r(4, 6),)),
    "conv1d": (None, (r(2, 4, 16),)),
    "max_pool_ceil": (lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True), (r(2, 3, 8, 7),)),
    "avg_pool_ceil": (lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (r(2, 3, 8, 7),)),
    "vector_norm": (lambda x: torch.linalg.vector_norm(x, dim=-1, keepdim=True) + torch.linalg.vector_norm(
        x, 3.0, dim=0) .sum() + torch.linalg.vector_norm(x, float("inf")), (r(4, 6),)),
    "sign_ceil_log1p_fmod": (lambda x: torch.sign(x) * torch.ceil(x * 3) + torch.log1p(x.abs()) + torch.fmod(x, 0.3),
                             (r(5, 7),)),
    "shifted_windows": (_shifted_windows, (r(2, 4, 4, 8),)),
    "moe_routing": (_moe_route, (r(6, 4),)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_op_matches_eager_on_the_cpu_backend(name: str) -> None:
    fn, args = CASES[name]
    model = nn.Conv1d(4, 6, 3, padding=1, stride=2).eval() if fn is None else Fn(fn)
    with torch.no_grad():
        compiled = lamina.compile(model, args, fallback=False, poison=True)
        for trial in range(2):
            fresh = tuple(torch.randn_like(a) if a.is_floating_point() else a for a in args) if trial else args
            assert rel_error(compiled(*fresh), model(*fresh)) <= 1e-5, name


def test_a_custom_op_is_refused_with_its_name() -> None:
    """transformers' MoE grouped GEMM is a custom op with a data-dependent loop: refused, named."""
    lib = torch.library.Library("lamina_test", "FRAGMENT")
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")
    lib.impl("twice", lambda x: torch.empty_like(x), "Meta")
    with pytest.raises(lamina.UnsupportedOpsError, match="lamina_test.twice"):
        lamina.compile(Fn(lambda x: torch.ops.lamina_test.twice(x) + 1), (r(3),), fallback=False)
