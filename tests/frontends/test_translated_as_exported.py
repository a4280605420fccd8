"""Programs lamina translates as torch.export gives them, without decomposing (frontends/fx.py
``_translatable_as_is``): in-place adds nothing else sees, constant pads, rolls, ``padding='same'``
convolutions, 1-D adaptive pools. Each is checked against eager PyTorch, and the cases a converter
cannot take (a mutation a view could see, a reflect pad) fall back to the decomposed program."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.frontends import fx


def _as_is(model: nn.Module, *args: torch.Tensor) -> bool:
    return fx._translatable_as_is(fx.export(model, args, as_exported=True))


def _check(model: nn.Module, *args: torch.Tensor) -> None:
    compiled = lamina.compile(model, args, poison=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), model(*args), rtol=1e-5, atol=1e-5)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y += x  # ResNet's blocks: an in-place add on a fresh intermediate
        return torch.relu(y)


class _SeenMutation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        flat = y.view(-1)  # a view made before the add sees it
        y += 1
        return flat * 3


class _ReadBeforeAndAfter(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x * 2
        before = y.sum()
        y += 1
        return before, y


def test_an_in_place_add_on_a_fresh_intermediate_is_translated_as_an_add() -> None:
    model, x = _Residual().eval(), torch.randn(2, 4, 6, 5)
    assert _as_is(model, x)
    _check(model, x)


@pytest.mark.parametrize("model", [_SeenMutation(), _ReadBeforeAndAfter()], ids=["view_sees_it", "read_before"])
def test_a_mutation_a_view_could_see_is_decomposed_first_and_stays_correct(model: nn.Module) -> None:
    x = torch.randn(3, 4)
    if isinstance(model, _SeenMutation):
        assert not _as_is(model, x)
    compiled = lamina.compile(model, (x,), poison=True)
    with torch.no_grad():
        for got, want in zip(torch.utils._pytree.tree_leaves(compiled(x)), torch.utils._pytree.tree_leaves(model(x))):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class _Pad(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "constant":
            return nn.functional.pad(x, (1, 2, 0, 3), value=-1.5) * 2
        return nn.functional.pad(x, (1, 2, 2, 1), mode=self.mode) * 2


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_pads_translate_and_other_modes_fall_back_to_their_decomposition(mode: str) -> None:
    _check(_Pad(mode), torch.randn(2, 3, 5, 6))


class _Roll(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, shifts=(3, -2), dims=(1, 2)) + torch.roll(x, 5, 1) + torch.roll(x, 0, 2)


def test_rolls_are_slices_joined_in_the_other_order() -> None:
    model, x = _Roll(), torch.randn(2, 7, 5)
    assert _as_is(model, x)
    _check(model, x)
    _check(nn.Sequential(nn.Flatten(0), _FlatRoll()), x)


class _FlatRoll(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x.view(7, 10), 4) * 2  # no dims: the flattened tensor rolls (decomposed)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (4, 1), ((2, 5), (2, 1)), (1, 1)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_named_conv_padding_matches_torch(kernel, dilation, padding: str) -> None:
    model = nn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation).eval()
    x = torch.randn(2, 3, 9, 8)
    assert _as_is(model, x)
    _check(model, x)


def test_a_one_dimensional_adaptive_pool_to_one_is_a_mean() -> None:
    model, x = nn.AdaptiveAvgPool1d(1), torch.randn(2, 6, 9)
    assert _as_is(model, x)
    _check(model, x)
    _check(nn.AdaptiveAvgPool1d(3), x)
