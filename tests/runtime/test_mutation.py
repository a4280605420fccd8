"""Models that update buffers or inputs in place: the update happens as in eager, and the output is the model's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.dynamo import LaminaBackend


class CountingBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("n", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n.add_(1)
        return x + self.n


class ScalesItsInput(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x + y


class RunningMean(nn.Module):
    """A buffer updated from the data, read before and after the update, and a second output."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        before = x - self.mean
        self.mean.mul_(0.9).add_(0.1 * x.mean(0))
        return before, x - self.mean


def _same(got: object, want: object) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    else:
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("factory", [CountingBuffer, RunningMean], ids=["counter", "running_mean"])
def test_buffer_updates_are_written_back(backend: str, factory) -> None:
    model, eager = factory(), factory()
    x = torch.randn(5, 8 if factory is CountingBuffer else 4)
    compiled = lamina.compile(model, (x,), backend=backend, poison=backend == "cpu")
    assert torch.equal(model.state_dict()[next(iter(model.state_dict()))], torch.zeros_like(
        eager.state_dict()[next(iter(eager.state_dict()))]))  # compiling does not run the update
    for _ in range(3):
        x = torch.randn_like(x)
        _same(compiled(x), eager(x))
        for key, value in eager.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_an_input_mutated_in_place_is_updated_and_the_output_is_the_models(backend: str) -> None:
    compiled = lamina.compile(ScalesItsInput(), (torch.randn(3), torch.randn(3)), backend=backend)
    x, y = torch.randn(3), torch.randn(3)
    x_eager = x.clone()
    want = ScalesItsInput()(x_eager, y)
    got = compiled(x, y)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(x, x_eager)


@pytest.mark.parametrize("factory", [CountingBuffer, RunningMean, ScalesItsInput],
                         ids=["counter", "running_mean", "input"])
def test_mutations_through_torch_compile(factory) -> None:
    torch._dynamo.reset()
    model, eager = factory(), factory()
    backend = LaminaBackend({"poison": True})
    compiled = torch.compile(model, backend=backend)
    shape = (5, 8) if factory is CountingBuffer else (5, 4) if factory is RunningMean else (3,)
    with torch.no_grad():
        for _ in range(3):
            args = (torch.randn(shape),) if factory is not ScalesItsInput else (torch.randn(shape), torch.randn(shape))
            eager_args = tuple(a.clone() for a in args)
            _same(compiled(*args), eager(*eager_args))
            for a, b in zip(args, eager_args):
                torch.testing.assert_close(a, b)
            for key, value in eager.state_dict().items():
                torch.testing.assert_close(model.state_dict()[key], value)
    assert backend.stats.graphs >= 1 and backend.stats.eager_graphs == 0
    torch._dynamo.reset()


class WritesACache(nn.Module):
    """A static KV cache: the new entry written at a position with index_copy_, then the cache read."""

    def forward(self, cache: torch.Tensor, pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        cache.index_copy_(1, pos, new)
        return cache.sum(1) * 2


def test_a_cache_written_with_index_copy_is_updated_in_place_without_copies() -> None:
    """The update lands in the caller's tensor itself (the wrapper uses index_put_), the output is right,
    and when the caller's inputs share memory the update is made out of place and still right."""
    model = WritesACache()
    cache, pos, new = torch.randn(2, 16, 8), torch.tensor([3]), torch.randn(2, 1, 8)
    compiled = lamina.compile(model, (cache.clone(), pos, new), poison=True)
    for step in range(5):
        pos = torch.tensor([step])
        new = torch.randn(2, 1, 8)
        got_cache, want_cache = cache.clone(), cache.clone()
        address = got_cache.data_ptr()
        got, want = compiled(got_cache, pos, new), model(want_cache, pos, new)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(got_cache, want_cache) and got_cache.data_ptr() == address
        cache = want_cache
    (plan,) = compiled._executor.plans.values()
    assert "index_put_.default(" in plan.source  # in place, guarded by the aliasing check
    shared = cache.clone()
    view_of_cache = shared[:, 5:6]  # shares memory with the cache: the update goes out of place
    want_cache = shared.clone()
    want = model(want_cache, torch.tensor([0]), view_of_cache.clone())
    got = compiled(shared, torch.tensor([0]), view_of_cache)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(shared, want_cache)


def test_an_update_is_not_made_in_place_when_the_old_value_is_read_after_it() -> None:
    class ReadsOldAfter(nn.Module):
        def forward(self, cache: torch.Tensor, pos: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            old = cache * 1.0
            cache.index_copy_(1, pos, new)
            return cache.sum(1) + old.sum(1)

    model = ReadsOldAfter()
    cache, pos, new = torch.randn(2, 16, 8), torch.tensor([3]), torch.randn(2, 1, 8)
    compiled = lamina.compile(model, (cache.clone(), pos, new), poison=True)
    got_cache, want_cache = cache.clone(), cache.clone()
    torch.testing.assert_close(compiled(got_cache, pos, new), model(want_cache, pos, new), rtol=1e-5, atol=1e-5)
    assert torch.equal(got_cache, want_cache)
