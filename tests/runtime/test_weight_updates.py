"""Weights changed in place after compile (an optimizer step, a manual edit) are seen by the next call,
whatever their layout, and so is everything a plan computes from them (newton's stacked weights)."""
from __future__ import annotations

import torch
from torch import nn

import lamina

from tests.conftest import rel_error


class StridedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wt = nn.Parameter(torch.randn(6, 8).t())  # [8, 6], not contiguous: read by a GEMM
        self.scale = nn.Parameter(torch.randn(6, 8).t())  # not contiguous: read by a generated kernel
        self.conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        self.lin = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.lin(x @ self.wt) * 2
        z = self.norm(x * self.scale.sum(1)) + 1
        return y, z, self.conv(img) * 1.5


def test_in_place_weight_updates_are_seen_for_every_layout() -> None:
    model = StridedWeights().eval()
    x, img = torch.randn(3, 8), torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        compiled = lamina.compile(model, (x, img), poison=True)
        for _ in range(3):
            for got, want in zip(compiled(x, img), model(x, img)):
                assert rel_error(got, want) <= 1e-5
            for p in model.parameters():
                p.mul_(1.5).add_(0.25)


def test_an_optimizer_step_is_seen() -> None:
    model = StridedWeights()
    x, img = torch.randn(3, 8), torch.randn(1, 3, 6, 6)
    compiled = lamina.compile(model.eval(), (x, img))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = sum(o.square().sum() for o in model(x, img))
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for got, want in zip(compiled(x, img), model(x, img)):
            assert rel_error(got, want) <= 1e-5


def test_newton_stacked_weights_follow_the_layer_weights() -> None:
    from lamina.models import make_gpt2_stack

    model, args = make_gpt2_stack(n_layers=4, batch=1, seq=6)
    pipeline = "canonicalize,newton{iters=4,chunk=4},newton-expand,fuse"
    with torch.no_grad():
        compiled = lamina.compile(model, args, pipeline=pipeline)
        assert rel_error(compiled(*args), model(*args)) <= 1e-4
        for name, p in model.named_parameters():
            if name.startswith("h."):
                p.mul_(0.9)
        assert rel_error(compiled(*args), model(*args)) <= 1e-4


def test_torch_compile_sees_a_replaced_parameter_and_new_data() -> None:
    """dynamo passes the module's weights on every call: a Parameter replaced by a new tensor, or given
    new ``.data``, is what the next call computes with (the plans built with the old one are dropped)."""
    from torch import nn

    from lamina.dynamo import LaminaBackend

    model = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 4)).eval()
    compiled = torch.compile(model, backend=LaminaBackend())
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
        model[0].weight = nn.Parameter(torch.randn(8, 8))
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
        model[2].weight.data = torch.randn(4, 8)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
        model[0].weight.data = model[0].weight.data.t()  # the same memory and shape, other strides
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)


def test_two_instances_sharing_one_dynamo_graph_each_get_their_weights() -> None:
    from torch import nn

    from lamina.dynamo import LaminaBackend

    torch.manual_seed(0)
    first, second = (nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval() for _ in range(2))
    backend = LaminaBackend()
    a, b = torch.compile(first, backend=backend), torch.compile(second, backend=backend)
    x = torch.randn(3, 8)
    with torch.no_grad():
        for _ in range(3):  # alternating calls
            torch.testing.assert_close(a(x), first(x), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b(x), second(x), rtol=1e-5, atol=1e-6)


def test_compiled_and_called_under_inference_mode() -> None:
    """torch.export under inference_mode lifts constants (a rotary table) as inference tensors, which
    have no version counter: the plan takes them as constants; weights changed there are still seen."""
    from lamina.models.hf import tiny_hf_model

    model, ids = tiny_hf_model("llama", layers=2, width=64), torch.randint(1, 128, (1, 16))
    with torch.inference_mode():
        compiled = lamina.compile(model, (ids,), example_kwargs={"use_cache": False})
        assert rel_error(compiled(ids, use_cache=False).logits, model(ids, use_cache=False).logits) <= 1e-5
        model.model.layers[0].mlp.up_proj.weight.mul_(2)
        assert rel_error(compiled(ids, use_cache=False).logits, model(ids, use_cache=False).logits) <= 1e-5
