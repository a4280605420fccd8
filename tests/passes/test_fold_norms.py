"""fold-norms: inference batch norms folded into the convolution or linear layer before them, with the
same outputs as eager. Tolerance: float32, 1e-5 relative to the output's scale (the folded layer
rounds once where eager rounds its output and then normalizes it)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.ir import interpret
from lamina.passes.fold_norms import fold_norms
from tests.conftest import rel_error

TOL = 1e-5


def _randomize(norm: nn.Module) -> None:
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.2, 3)
    if norm.affine:
        norm.weight.data.uniform_(-2, 2)
        norm.bias.data.uniform_(-1, 1)


class _ConvNorms(nn.Module):
    """A conv with bias and an affine norm, one without bias and a norm without affine, a linear with a
    1-d norm, and a norm that cannot fold (its conv's output is read twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.na = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b, self.nb = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8, affine=False)
        self.c, self.nc = nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8)
        self.fc, self.nfc = nn.Linear(8, 6), nn.BatchNorm1d(6)
        for norm in (self.na, self.nb, self.nc, self.nfc):
            _randomize(norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.na(self.a(x)))
        y = self.nb(self.b(y))
        shared = self.c(y)
        y = self.nc(shared) + shared
        return self.nfc(self.fc(y.mean((2, 3))))


def _model() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return _ConvNorms().eval(), (torch.randn(2, 3, 12, 12),)


def test_norms_fold_into_the_layers_they_follow() -> None:
    model, args = _model()
    graph = fold_norms(lamina.trace(model, args))
    norms = [op for op in graph.walk() if op.name == "batch_norm"]
    assert len(norms) == 1 and norms[0].loc.module.endswith("nc")  # the conv read twice keeps its norm
    params = {id(p.value) for p in graph.params}
    folded = [op for op in graph.ops if op.name in ("conv2d", "linear") and id(op.operands[1]) not in params]
    assert len(folded) == 3 and all(len(op.operands) == 3 for op in folded)  # each with a bias now
    with torch.no_grad():
        want = model(*args)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    (got,) = interpret(graph, [a.numpy() for a in args], weights)
    assert rel_error(got, want) <= TOL


@pytest.mark.parametrize("language", ["c", "numba"])
def test_folded_models_match_eager_and_follow_weights_changed_in_place(language: str) -> None:
    model, args = _model()
    compiled = lamina.compile(model, args, poison=True, kernel_language=language)
    assert [t.name for t in compiled.timings][:2] == ["fold-norms", "channels-last"]  # the default pipeline
    with torch.no_grad():
        assert rel_error(compiled(*args), model(*args)) <= TOL
        model.na.running_var.mul_(2.0)
        model.nfc.bias.add_(0.5)
        model.a.weight.mul_(-1.0)
        assert rel_error(compiled(*args), model(*args)) <= TOL


def test_a_layer_whose_weight_is_an_input_keeps_its_norm() -> None:
    class ConvOfInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.BatchNorm2d(4)
            _randomize(self.norm)

        def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return self.norm(nn.functional.conv2d(x, w))

    torch.manual_seed(1)
    model, args = ConvOfInputs().eval(), (torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3))
    graph = fold_norms(lamina.trace(model, args))
    assert [op.name for op in graph.walk()].count("batch_norm") == 1
