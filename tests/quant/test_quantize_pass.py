"""The quantize pass: which linears it rewrites, the IR it leaves, and its errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lamina
from lamina.ir.interpreter import interpret
from lamina.passes.manager import PipelineError, run_pipeline
from lamina.passes.quantize import QuantizeError


class Net(nn.Module):
    def __init__(self, k: int = 64) -> None:
        super().__init__()
        self.up = nn.Linear(k, 128)
        self.down = nn.Linear(128, 64, bias=False)
        self.lm_head = nn.Linear(64, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.down(torch.relu(self.up(x))))


def _traced(k: int = 64):
    torch.manual_seed(0)
    model = Net(k).eval()
    return model, lamina.trace(model, (torch.randn(2, k),))


def test_linears_become_qlinear_and_the_lm_head_stays_float() -> None:
    model, g = _traced()
    q = run_pipeline(g, "quantize{bits=4,group=32}")
    names = [op.name for op in q.ops]
    assert names.count("qlinear") == 2 and names.count("quantize") == 2 and names.count("linear") == 1
    (lm,) = [op for op in q.ops if op.name == "linear"]
    assert lm.loc.module == "lm_head"
    assert any(op.name == "add" and op.loc.module == "up" for op in q.ops)  # the bias, after qlinear
    x = np.random.default_rng(1).standard_normal((2, 64), np.float32)
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    (exact,), (approx,) = interpret(g, [x], params), interpret(q, [x], params)
    error = np.linalg.norm(exact - approx) / np.linalg.norm(exact)
    assert 0 < error < 0.3  # 4-bit weights: close (about 10% per layer), not equal


def test_layers_and_keep_select_by_module_path() -> None:
    _, g = _traced()
    only_up = run_pipeline(g, "quantize{bits=8,layers=up}")
    assert [op.loc.module for op in only_up.ops if op.name == "qlinear"] == ["up"]
    everything = run_pipeline(g, "quantize{bits=8,keep=none}")
    assert len([op for op in everything.ops if op.name == "qlinear"]) == 3
    two = run_pipeline(g, "quantize{bits=8,keep=up|lm_head}")
    assert [op.loc.module for op in two.ops if op.name == "qlinear"] == ["down"]


@pytest.mark.parametrize("pipeline, error, words", [
    ("quantize{bits=3}", QuantizeError, "bits=3"),
    ("quantize{bits=8,scheme=nf4}", QuantizeError, "scheme='nf4'"),
    ("quantize{bits=4,group=40}", QuantizeError, "multiples of 32"),
    ("quantize{bits=8,group=48}", QuantizeError, "group=48 does not divide the input size 64;.*layer up"),
    ("quantize{bits=8,layers=nothing*}", QuantizeError, "nothing to quantize"),
    ("quantize{bitz=8}", PipelineError, "no option 'bitz'"),
])
def test_bad_options_are_clear_errors(pipeline: str, error: type, words: str) -> None:
    _, g = _traced()
    with pytest.raises(error, match=words):
        run_pipeline(g, pipeline)


def test_a_model_without_linears_is_an_error() -> None:
    g = lamina.trace(nn.ReLU(), (torch.randn(3),))
    with pytest.raises(QuantizeError, match="no float32 linear layer"):
        run_pipeline(g, "quantize{bits=8}")


def test_mlir_export_refuses_packed_weights_clearly() -> None:
    from lamina.ir.mlir import MLIRExportError, to_mlir

    _, g = _traced()
    with pytest.raises(MLIRExportError, match="quantize at up: packed quantized weights .* before the quantize pass"):
        to_mlir(run_pipeline(g, "quantize{bits=8}"))


def test_quantize_then_newton_stacks_quantized_weights_and_the_other_order_says_why_not() -> None:
    from lamina.models import make_gpt2_stack

    model, args = make_gpt2_stack(n_layers=4)
    plain = lamina.compile(model, args, pipeline="canonicalize,quantize{bits=8,keep=none},fuse", fallback=False)
    stacked = lamina.compile(model, args, pipeline="canonicalize,quantize{bits=8,keep=none},newton{iters=4,chunk=4},fuse",
                             fallback=False, poison=True)
    assert any(op.name == "layer_scan" for op in stacked.graph.walk())  # newton ran
    with torch.no_grad():
        torch.testing.assert_close(stacked(*args), plain(*args), rtol=1e-5, atol=1e-5)
    with pytest.raises(QuantizeError, match="put quantize.* before newton"):
        lamina.compile(model, args, pipeline="canonicalize,newton{iters=4,chunk=4},quantize{bits=8},fuse")


def test_transformers_gpt2_conv1d_layers_quantize_calibrate_and_save(tmp_path) -> None:
    from lamina.ir.interpreter import interpret
    from lamina.models.hf import make_hf_gpt2

    model, args, *kwargs = make_hf_gpt2()
    kwargs = kwargs[0] if kwargs else {}
    stats = lamina.calibrate(model, [args[0]], cache_dir=tmp_path, progress=False)
    assert "transformer.h.0.attn.c_attn.weight" in stats.linears  # Conv1D, weight [in, out]
    assert stats.linears["transformer.h.0.attn.c_attn.weight"].out_features == 192
    compiled = lamina.compile(model, args, example_kwargs=kwargs, pipeline="canonicalize,quantize{budget=6.0},fuse",
                              calibration=stats, fallback=False, poison=True)
    rows = {r.weight: r for r in compiled.quantization}
    assert rows["transformer.h.0.mlp.c_fc.weight"].fmt is not None
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    (want, *_) = interpret(compiled.graph, [a.numpy() for a in args], params)
    with torch.no_grad():
        got = compiled(*args, **kwargs).logits.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    compiled.save(tmp_path / "gpt2.safetensors")
    keys = {p.key for p in lamina.load(tmp_path / "gpt2.safetensors").graph.params}
    assert "transformer.h.0.mlp.c_fc.weight.qweight" in keys and "transformer.h.0.mlp.c_fc.weight" not in keys
