"""Saved modules with a frozen plan: ``lamina.load`` thaws the plan and its C kernels, with no tracing,
planning, SymPy or Numba, and gives eager's numbers (float32, 1e-5 relative: the C kernels sum in
another order than torch). Anything the plan cannot serve goes to the full module; a plan this
machine cannot run is never loaded."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import lamina
from lamina.cli import main as cli
from lamina.errors import IndexOutOfRangeError, InputMismatchError
from lamina.models import make_gpt2_stack, make_mlp
from lamina.runtime import native_kernels
from lamina.runtime.frozen_module import FrozenModule
from lamina.saved import FROZEN, SaveError, _checksum
from tests.conftest import rel_error

pytestmark = pytest.mark.skipif(native_kernels.compiler() is None, reason="no C compiler: nothing is frozen")

F32_TOL = 1e-5

FRESH = """
import json, sys, torch
import lamina
m = lamina.load(sys.argv[1])
out = m(torch.load(sys.argv[2]))
want = torch.load(sys.argv[3])
print(json.dumps({"kind": type(m).__name__, "error": float((out - want).abs().max() / want.abs().max()),
                  "imported": sorted(k for k in ("numba", "sympy", "llvmlite", "lamina.ir.core", "lamina.api")
                                     if k in sys.modules)}))
"""


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> tuple[nn.Module, torch.Tensor, Path]:
    root = tmp_path_factory.mktemp("frozen")
    model, (idx,) = make_gpt2_stack(batch=2, seq=16, d_model=64, n_layers=2, vocab=96)
    lamina.save(lamina.compile(model, (idx,)), root / "gpt2.lamina", frozen=True)
    return model, idx, root / "gpt2.lamina"


def _rewrite(path: Path, out: Path, metadata_change=None, tensor_change=None, recompute_checksum=True) -> Path:
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if metadata_change:
        metadata_change(metadata)
    if tensor_change:
        tensor_change(tensors)
    if recompute_checksum:
        metadata["checksum"] = _checksum(tensors)
    save_file(tensors, str(out), metadata)
    return out


def test_a_saved_module_loads_as_its_frozen_plan_and_matches_eager(gpt2) -> None:
    model, idx, path = gpt2
    loaded = lamina.load(path)
    assert isinstance(loaded, FrozenModule)
    for ids in (idx, torch.randint(0, 96, idx.shape)):
        with torch.no_grad():
            assert rel_error(loaded(ids), model(ids)) <= F32_TOL


def test_a_fresh_process_runs_it_without_sympy_or_numba(gpt2, tmp_path) -> None:
    model, idx, path = gpt2
    torch.save(idx, tmp_path / "idx.pt")
    with torch.no_grad():
        torch.save(model(idx), tmp_path / "want.pt")
    done = subprocess.run([sys.executable, "-c", FRESH, str(path), str(tmp_path / "idx.pt"), str(tmp_path / "want.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kind"] == "FrozenModule" and result["error"] <= F32_TOL
    assert result["imported"] == [], result  # neither the compiler's IR nor its JIT were needed


def test_other_shapes_go_to_the_full_module_and_its_clear_error(gpt2) -> None:
    _, idx, path = gpt2
    loaded = lamina.load(path)
    with pytest.raises(InputMismatchError, match="expects shape"):
        loaded(torch.randint(0, 96, (3, 16)))
    assert loaded.graph.name == "forward"  # attributes of the CompiledModule reach it too


def test_out_of_range_token_ids_raise_and_the_next_call_is_clean(gpt2) -> None:
    model, idx, path = gpt2
    loaded = lamina.load(path)
    bad = idx.clone()
    bad[0, 3] = 96
    with pytest.raises(IndexOutOfRangeError, match="index 96 is out of range"):
        loaded(bad)
    with torch.no_grad():
        assert rel_error(loaded(idx), model(idx)) <= F32_TOL


def test_concurrent_callers_each_get_their_own_result(gpt2) -> None:
    model, _, path = gpt2
    loaded = lamina.load(path)
    inputs = [torch.randint(0, 96, (2, 16)) for _ in range(4)]
    with torch.no_grad():
        wants = [model(x) for x in inputs]
    errors: list[float] = []

    def work(i: int) -> None:
        for _ in range(5):
            errors.append(rel_error(loaded(inputs[i]), wants[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 20 and max(errors) <= F32_TOL


class _TwoResults(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(48)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm(x)
        return torch.softmax(y, -1), y.amax(-1)


def test_a_tuple_of_results_comes_back_as_a_tuple(tmp_path) -> None:
    model, x = _TwoResults().eval(), torch.randn(5, 48)
    lamina.save(lamina.compile(model, (x,)), tmp_path / "two.lamina", frozen=True)
    loaded = lamina.load(tmp_path / "two.lamina")
    assert isinstance(loaded, FrozenModule)
    got, want = loaded(x), model(x)
    assert isinstance(got, tuple) and len(got) == 2
    for g, w in zip(got, want):
        assert rel_error(g, w.detach()) <= F32_TOL


def test_a_plan_frozen_for_cpu_features_this_cpu_lacks_is_not_loaded(gpt2, tmp_path, caplog) -> None:
    model, idx, path = gpt2

    def add_feature(metadata: dict) -> None:
        plan = json.loads(metadata["frozen"])
        plan["built_with"]["cpu_features"].append("lamina_imaginary_feature")
        metadata["frozen"] = json.dumps(plan)

    other = _rewrite(path, tmp_path / "other_cpu.lamina", metadata_change=add_feature)
    with caplog.at_level(logging.INFO, logger="lamina.cache"):
        loaded = lamina.load(other)
    assert not isinstance(loaded, FrozenModule)
    assert "lamina_imaginary_feature" in caplog.text
    with torch.no_grad():
        assert rel_error(loaded(idx), model(idx)) <= F32_TOL


def test_a_library_the_loader_refuses_falls_back_to_planning(gpt2, tmp_path, caplog) -> None:
    model, idx, path = gpt2

    def junk(tensors: dict) -> None:
        tensors[f"{FROZEN}library"] = torch.zeros(64, dtype=torch.uint8)

    broken = _rewrite(path, tmp_path / "junk_library.lamina", tensor_change=junk)
    with caplog.at_level(logging.WARNING, logger="lamina.cache"):
        loaded = lamina.load(broken)
    assert not isinstance(loaded, FrozenModule) and "does not load here" in caplog.text
    with torch.no_grad():
        assert rel_error(loaded(idx), model(idx)) <= F32_TOL


def test_a_changed_library_without_its_checksum_is_a_clear_error(gpt2, tmp_path) -> None:
    _, _, path = gpt2

    def flip(tensors: dict) -> None:
        tensors[f"{FROZEN}library"] = tensors[f"{FROZEN}library"].clone()
        tensors[f"{FROZEN}library"][100] ^= 1

    damaged = _rewrite(path, tmp_path / "damaged.lamina", tensor_change=flip, recompute_checksum=False)
    with pytest.raises(SaveError, match="checksum"):
        lamina.load(damaged)


def test_frozen_false_plans_it_again(gpt2) -> None:
    model, idx, path = gpt2
    loaded = lamina.load(path, frozen=False)
    assert isinstance(loaded, lamina.CompiledModule)
    with torch.no_grad():
        assert rel_error(loaded(idx), model(idx)) <= F32_TOL


def test_a_quantized_module_is_saved_without_a_frozen_plan(tmp_path, caplog) -> None:
    model, args = make_mlp()
    compiled = lamina.compile(model, args, pipeline="canonicalize,quantize{bits=8,group=32},fuse")
    with caplog.at_level(logging.INFO, logger="lamina.cache"):
        lamina.save(compiled, tmp_path / "q.lamina")
    assert "quantized linears" in caplog.text
    loaded = lamina.load(tmp_path / "q.lamina")
    assert isinstance(loaded, lamina.CompiledModule)
    torch.testing.assert_close(loaded(*args), compiled(*args))


def test_a_loaded_module_saves_again(gpt2, tmp_path) -> None:
    model, idx, path = gpt2
    lamina.save(lamina.load(path), tmp_path / "again.lamina", frozen=True)
    with torch.no_grad():
        assert rel_error(lamina.load(tmp_path / "again.lamina")(idx), model(idx)) <= F32_TOL


def test_lamina_run_says_it_used_the_frozen_plan(gpt2, capsys) -> None:
    _, _, path = gpt2
    assert cli(["run", str(path), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "(frozen plan)" in out and "output [2, 16, 96] float32" in out


def test_by_default_a_plan_slower_than_the_module_is_not_frozen(tmp_path, monkeypatch, caplog) -> None:
    """``lamina.save`` times the frozen plan against the module's own (interleaved medians) and keeps it
    only within SLOWER_AT_MOST; here the bound is 0, so any plan is too slow, and then no bound at all."""
    from lamina.runtime import freeze

    model, x = _TwoResults().eval(), torch.randn(5, 48)
    compiled = lamina.compile(model, (x,))
    monkeypatch.setattr(freeze, "SLOWER_AT_MOST", 0.0)
    with caplog.at_level(logging.INFO, logger="lamina.cache"):
        lamina.save(compiled, tmp_path / "slow.lamina")
    assert "its C kernels take" in caplog.text and "frozen=True" in caplog.text
    assert not isinstance(lamina.load(tmp_path / "slow.lamina"), FrozenModule)
    monkeypatch.setattr(freeze, "SLOWER_AT_MOST", float("inf"))
    lamina.save(compiled, tmp_path / "fast.lamina")
    assert isinstance(lamina.load(tmp_path / "fast.lamina"), FrozenModule)
    lamina.save(compiled, tmp_path / "never.lamina", frozen=False)
    assert not isinstance(lamina.load(tmp_path / "never.lamina"), FrozenModule)
