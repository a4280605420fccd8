"""torch.compile(backend="lamina"): registration, options, partial fallback, dynamic shapes, modes, dumps."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest
import torch
from torch import nn

from lamina.dynamo import LaminaBackend
from lamina.ir.errors import LaminaError
from lamina.models import make_gpt2_stack


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 4)).eval()


class WithCummax(nn.Module):
    """cummax has no lamina translation: the linears around it are compiled, cummax runs in PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        top = torch.cummax(h, dim=-1).values
        return torch.tanh(self.out(top * 2.0))


def test_entry_point_registers_the_backend_without_importing_lamina() -> None:
    assert "lamina" in entry_points(group="torch_dynamo_backends").names
    script = textwrap.dedent("""
        import sys, torch
        m = torch.nn.Linear(4, 4).eval()
        x = torch.randn(2, 4)
        with torch.no_grad():
            got = torch.compile(m, backend="lamina")(x)
        assert torch.allclose(got, m(x), atol=1e-6), "wrong result"
        assert "lamina" in sys.modules
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_import_lamina_registers_it_when_dynamo_is_loaded() -> None:
    from torch._dynamo.backends.registry import lookup_backend

    import lamina  # noqa: F401

    assert callable(lookup_backend("lamina"))


def test_options_pass_through_and_unknown_options_are_named() -> None:
    model, x = mlp(), torch.randn(3, 8)
    with torch.no_grad():
        got = torch.compile(model, backend="lamina", options={"target": "reference", "pipeline": "canonicalize"})(x)
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-6)
        torch._dynamo.reset()
        with pytest.raises(Exception, match="unknown lamina option.*colour.*known: target"):
            torch.compile(model, backend="lamina", options={"colour": "blue"})(x)


def test_unsupported_op_runs_in_pytorch_with_a_logged_line(caplog) -> None:
    torch.manual_seed(0)
    model, x = WithCummax().eval(), torch.randn(5, 8)
    backend = LaminaBackend()
    with caplog.at_level(logging.INFO, logger="lamina"), torch.no_grad():
        got = torch.compile(model, backend=backend)(x)
        want = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    lines = [r.getMessage() for r in caplog.records if r.name == "lamina.fallback"]
    assert len(lines) == 1 and "aten.cummax.default" in lines[0] and "runs in PyTorch" in lines[0]
    stats = backend.stats  # the graph is partitioned: the linears are lamina pieces, cummax runs in PyTorch
    assert stats.pieces >= 2 and stats.partitioned_graphs == 1 and stats.graphs == 0 and stats.kernels >= 1
    compiled = [r.getMessage() for r in caplog.records if r.name == "lamina.compile"]
    assert any(m.startswith("partitioned a graph into") for m in compiled)
    assert sum(m.startswith("compiled piece fused_") for m in compiled) == stats.pieces


def test_fallback_false_raises_listing_the_unsupported_ops() -> None:
    model, x = WithCummax().eval(), torch.randn(5, 8)
    with torch.no_grad(), pytest.raises(Exception, match="aten.cummax.default"):
        torch.compile(model, backend=LaminaBackend({"fallback": False}))(x)


def test_new_batch_and_sequence_lengths_reuse_the_compiled_kernels() -> None:
    model, (idx,) = make_gpt2_stack(n_layers=2, batch=2, seq=8)
    backend = LaminaBackend()
    compiled = torch.compile(model, backend=backend, dynamic=True)
    kernels_after_first = None
    with torch.no_grad():
        for batch, seq in ((2, 8), (3, 8), (2, 13), (5, 6)):
            x = torch.randint(0, 64, (batch, seq))
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
            kernels_after_first = kernels_after_first or backend.stats.kernels
    assert backend.stats.graphs == 1, "dynamo or lamina compiled the graph again"
    assert backend.stats.kernels == kernels_after_first > 0


def test_automatic_dynamic_compiles_once_more_then_never() -> None:
    model = mlp()
    backend = LaminaBackend()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        for batch in (3, 4, 7, 9):
            x = torch.randn(batch, 8)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    assert backend.stats.graphs == 2  # static first, then dynamo marks the batch dim dynamic


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_inference_modes(mode) -> None:
    model, x = mlp(), torch.randn(3, 8)
    backend = LaminaBackend()
    with mode():
        got = torch.compile(model, backend=backend)(x)
        want = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert backend.stats.graphs == 1 and backend.stats.eager_graphs == 0


def test_a_graph_that_needs_autograd_runs_in_pytorch_with_the_reason_logged(caplog) -> None:
    model, x = mlp().train(), torch.randn(3, 8)
    backend = LaminaBackend()
    with caplog.at_level(logging.INFO, logger="lamina.fallback"):
        loss = torch.compile(model, backend=backend)(x).square().sum()
        loss.backward()
    grad = model[0].weight.grad.clone()
    model.zero_grad()
    model(x).square().sum().backward()
    torch.testing.assert_close(grad, model[0].weight.grad)
    assert backend.stats.eager_graphs == 1
    assert any("needs autograd" in r.getMessage() for r in caplog.records)


def test_dump_dir_holds_graph_ir_kernels_wrapper_and_summary(tmp_path) -> None:
    model, x = mlp(), torch.randn(3, 8)
    with torch.no_grad():
        torch.compile(model, backend="lamina", options={"dump_dir": str(tmp_path)})(x)
    graph = tmp_path / "graph_0"
    assert "def forward" in (graph / "input_graph.py").read_text()
    assert (graph / "ir" / "00-input.lamina").exists() and any((graph / "ir").glob("*fuse*"))
    assert list((graph / "kernels").glob("k_*.py")) and "def run(inputs, sizes)" in (graph / "wrapper.py").read_text()
    summary = json.loads((graph / "summary.json").read_text())
    assert summary["ops"] and summary["fused_kernels"] and summary["fallbacks"] == []
    assert set(summary["pass_seconds"]) == {"fold-norms", "channels-last", "canonicalize", "fuse", "wrap"} and summary["compile_seconds"] > 0


def test_dump_dir_from_the_environment_records_fallbacks(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAMINA_DUMP_DIR", str(tmp_path))
    with torch.no_grad():
        torch.compile(WithCummax().eval(), backend="lamina")(torch.randn(5, 8))
    summary = json.loads((tmp_path / "graph_0" / "summary.json").read_text())
    assert any("aten.cummax.default" in line for line in summary["fallbacks"])


def test_bad_option_value_is_a_lamina_error() -> None:
    with pytest.raises(LaminaError, match="unknown lamina option"):
        LaminaBackend({"tagret": "cpu"})
