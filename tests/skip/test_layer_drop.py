"""lamina.skip.LayerDropRegularizer: LayerSkip's layer dropout and early-exit loss, in a plain training loop."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lamina.skip import LayerDropError, LayerDropRegularizer


class Stack(nn.Module):
    def __init__(self, layers: int = 4, width: int = 8, vocab: int = 5) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.head = nn.Linear(width, vocab)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def test_drop_rates_rise_from_zero_to_max_drop() -> None:
    reg = LayerDropRegularizer(Stack(5).blocks, nn.Identity(), max_drop=0.4)
    assert [reg.drop_rate(i) for i in range(5)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_evaluation_mode_is_untouched() -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    x = torch.randn(3, 6, 8)
    want = model(x)
    with LayerDropRegularizer(model.blocks, model.head, max_drop=0.9):
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)


def test_early_exit_loss_is_the_depth_weighted_cross_entropy_of_each_intermediate_state() -> None:
    torch.manual_seed(1)
    model = Stack(layers=3).train()
    x, y = torch.randn(2, 4, 8), torch.randint(0, 5, (2, 4))
    with LayerDropRegularizer(model.blocks, model.head, max_drop=0.0, exit_weight=0.5) as reg:
        model(x)
        got = reg.loss(y)
    h1 = model.blocks[0](x)
    h2 = model.blocks[1](h1)
    ce = [F.cross_entropy(model.head(h).flatten(0, 1), y.flatten()) for h in (h1, h2)]
    torch.testing.assert_close(got, 0.5 * (ce[0] / 3 + 2 * ce[1] / 3))


def test_dropped_blocks_pass_their_input_through_per_sequence() -> None:
    torch.manual_seed(2)
    model = Stack(layers=2).train()
    x = torch.randn(400, 1, 8)
    with LayerDropRegularizer(model.blocks, model.head, max_drop=0.5, exit_weight=0.0):
        got = model(x)
    full = model.head(model.blocks[1](model.blocks[0](x)))
    skipped = model.head(model.blocks[0](x))  # the last block (rate 0.5) dropped
    is_full = (got - full).abs().amax((1, 2)) < 1e-6
    is_skipped = (got - skipped).abs().amax((1, 2)) < 1e-6
    assert bool((is_full | is_skipped).all())
    assert 0.35 < is_skipped.float().mean().item() < 0.65


def test_hooks_are_removed_on_exit() -> None:
    model = Stack().train()
    with LayerDropRegularizer(model.blocks, model.head, max_drop=0.9):
        pass
    x = torch.randn(50, 2, 8)
    torch.testing.assert_close(model(x), model.head(model.blocks[3](model.blocks[2](model.blocks[1](
        model.blocks[0](x))))))


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_drop=1.0), "max_drop=1.0"), (dict(exit_weight=-1.0), "exit_weight=-1.0")])
def test_bad_options_are_errors_naming_them(kwargs: dict, message: str) -> None:
    with pytest.raises(LayerDropError, match=message):
        LayerDropRegularizer(Stack().blocks, nn.Identity(), **kwargs)


def test_loss_before_a_training_forward_is_an_error() -> None:
    with pytest.raises(LayerDropError, match="no training forward"):
        LayerDropRegularizer(Stack().blocks, nn.Identity()).loss(torch.zeros(1, 1, dtype=torch.long))


def test_a_transformers_llama_trains_with_it() -> None:
    from lamina.models.hf import tiny_hf_model

    model = tiny_hf_model("llama", layers=4).train()
    reg = LayerDropRegularizer(model.model.layers, lambda h: model.lm_head(model.model.norm(h)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(3))
    losses = []
    with reg:
        for _ in range(15):
            loss = F.cross_entropy(model(x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
            total = loss + reg.loss(x[:, 1:])
            opt.zero_grad()
            total.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_blocks_returning_tuples_keep_their_other_outputs() -> None:
    """CharGPT's blocks return (h, keys, values): a dropped block passes h through and keeps its keys and values,
    and a whole training forward gives the early-exit loss."""
    from lamina.models.char_gpt import CharGPT

    torch.manual_seed(4)
    model = CharGPT(d_model=32, n_heads=2, n_layers=3, max_len=16).train()
    x = torch.randint(0, 96, (64, 8))
    h = model.embed(x)
    with LayerDropRegularizer(model.h, model.head, max_drop=0.9, exit_weight=0.5) as reg:
        out, k, v = model.h[2](h)  # the last block: dropped for about 90% of the sequences
        dropped = (out - h).abs().amax((1, 2)) == 0
        assert 0.7 < dropped.float().mean().item() < 1.0
        assert k.shape == v.shape == (64, 2, 8, 16)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), x.flatten()) + reg.loss(x)
    loss.backward()
    assert model.h[0].c_fc.weight.grad is not None
