"""lamina.snlp: Newton forward passes in PyTorch, the regularizer, and Newton on a trained model."""
from __future__ import annotations

import pytest
import torch

import lamina
from lamina.models.char_gpt import CharGPT
from lamina.models.char_training import VOCAB, TrainConfig, char_gpt_deltas, encode, stdlib_corpus, train
from lamina.snlp import SNLPRegularizer, newton_forward


def _model(layers: int = 4, d_model: int = 32) -> CharGPT:
    torch.manual_seed(0)
    return CharGPT(VOCAB, d_model, 4, layers, max_len=64)


def test_newton_forward_with_enough_iterations_is_the_sequential_forward() -> None:
    model = _model().eval()
    x = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        want = model(x)
        for iters, chunk in ((4, 0), (2, 2), (1, 1), (9, 3)):
            got = model.head(newton_forward(char_gpt_deltas(model), model.embed(x), iters, chunk))
            assert float((got - want).abs().max() / want.abs().max()) <= 1e-5, (iters, chunk)
        rough = model.head(newton_forward(char_gpt_deltas(model), model.embed(x), 1))
        assert float((rough - want).abs().max()) > 0  # one iteration over 4 layers is an approximation


def test_regularizer_is_zero_at_convergence_and_trains_the_model() -> None:
    model = _model().train()
    x = torch.randint(0, VOCAB, (2, 16))
    logits = model(x)
    exact = SNLPRegularizer(iters=(4,))(char_gpt_deltas(model), model.embed(x), model.head, logits)
    assert abs(exact.item()) <= 1e-6
    reg = SNLPRegularizer(iters=(1, 2), weight=2.0)(char_gpt_deltas(model), model.embed(x), model.head, logits)
    assert reg.item() > 0
    reg.backward()
    assert model.h[0].c_attn.weight.grad is not None and float(model.h[0].c_attn.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="iters >= 1"):
        newton_forward(char_gpt_deltas(model), model.embed(x), 0)


def test_newton_error_falls_monotonically_with_iterations_on_a_trained_model() -> None:
    """K < C on a briefly trained CharGPT, through lamina's newton pass on the cpu backend: every extra
    iteration brings the logits closer to the sequential ones, and K = C matches them."""
    model = _model(layers=4, d_model=48)
    data = encode(stdlib_corpus(200_000))
    train(model, data, TrainConfig(steps=150, batch=8, seq=32, lr=3e-3))
    x = data[:64].view(2, 32)
    with torch.no_grad():
        want = model(x)
    errors = []
    for iters in (1, 2, 3, 4):
        pipeline = f"canonicalize,newton{{iters={iters}}},newton-expand,fuse"
        got = lamina.compile(model, (x,), pipeline=pipeline, poison=True)(x)
        errors.append(float((got - want).abs().max() / want.abs().max()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] <= 1e-5 and errors[0] > 1e-3, errors
