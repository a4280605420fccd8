"""Where time goes: compiled.profile's per-step table (rates from the registry's FLOP counts and the
bytes each step moves), steps by name in torch.profiler, LAMINA_PROFILE=1."""
from __future__ import annotations

import os
import subprocess
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import lamina
from lamina.ir.ops import REGISTRY
from lamina.models import make_gpt2_stack
from lamina.runtime.limits import Limits
from lamina.runtime.timeline import kernel_rows


def _stack() -> tuple[torch.nn.Module, torch.Tensor]:
    model, (idx,) = make_gpt2_stack(batch=2, seq=16, d_model=64, n_heads=4, n_layers=2, vocab=96)
    return model, idx


class _EmbedThenNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table, self.norm = torch.nn.Embedding(50000, 64), torch.nn.LayerNorm(64)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.norm(self.table(idx))


def test_a_gathered_table_counts_the_rows_read_not_the_table() -> None:
    idx = torch.tensor([[3, 49999, 7, 3]])
    compiled = lamina.compile(_EmbedThenNorm(), (idx,))
    with torch.no_grad():
        (event,) = compiled.profile(idx).events
    rows, index, norm, out = 4 * 64 * 4, 4 * 8, 2 * 64 * 4, 4 * 64 * 4
    assert event.nbytes == rows + index + norm + out  # the table itself is 12.8 MB


def test_the_registry_counts_flops_of_the_arithmetic_bound_ops() -> None:
    assert REGISTRY["linear"].flop_count([(8, 64), (32, 64)], [(8, 32)], {}) == 2 * 8 * 32 * 64
    assert REGISTRY["matmul"].flop_count([(3, 8, 64), (3, 64, 5)], [(3, 8, 5)], {}) == 2 * 3 * 8 * 5 * 64
    assert REGISTRY["conv2d"].flop_count([(1, 4, 9, 9), (6, 2, 3, 3)], [(1, 6, 7, 7)], {"groups": 2}) \
        == 2 * 6 * 49 * 2 * 9
    q = (2, 4, 16, 8)
    full = REGISTRY["attention"].flop_count([q, q, q], [q], {"causal": False})
    assert full == 4 * 2 * 4 * 16 * 16 * 8 and REGISTRY["attention"].flop_count([q, q, q], [q], {"causal": True}) == full // 2
    assert REGISTRY["add"].flop_count([(4,), (4,)], [(4,)], {}) is None  # judged by bytes


def test_profile_rows_give_each_step_its_rate_against_the_limits() -> None:
    model, idx = _stack()
    compiled = lamina.compile(model, (idx,))
    with torch.no_grad():
        timeline = compiled.profile(idx)
        assert torch.allclose(compiled(idx), model(idx), atol=1e-5)  # profiling leaves the module as it was
    limits = Limits(copy_gbps=10.0, gemm_gflops=100.0, device="cpu")
    rows = {r.label: r for r in kernel_rows(timeline, limits)}
    fc = rows["linear h.0.mlp.c_fc"]  # [32, 64] x [256, 64]^T
    event = next(e for e in timeline.events if e.label == "linear h.0.mlp.c_fc")
    assert event.flops == 2 * 32 * 256 * 64
    assert fc.gflops is not None and fc.gbps > 0  # the roofline: the nearer of its two limits
    assert abs(fc.of_limit - max(fc.gflops / 100.0, fc.gbps / 10.0)) < 1e-9
    norm = rows["fused h.0.ln_1"]
    assert norm.gflops is None and norm.gbps > 0 and abs(norm.of_limit - norm.gbps / 10.0) < 1e-9
    assert abs(sum(r.share for r in rows.values()) - 1.0) < 1e-6
    table = timeline.table(limits)
    assert table.splitlines()[0] == "| step | calls | ms | share | GB/s | GFLOP/s | of limit |"
    assert "linear h.0.mlp.c_fc" in table and "limits: copy 10.0 GB/s" in table


def test_every_step_shows_by_name_in_torch_profiler() -> None:
    model, idx = _stack()
    compiled = lamina.compile(model, (idx,))
    with torch.no_grad():
        compiled(idx)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            got = compiled(idx)
        after = compiled(idx)  # the plain plan again once the profiler stops
    names = {e.key for e in prof.key_averages()}
    assert {"linear h.0.attn.c_attn", "attention h.1.attn", "fused h.0.ln_1", "fused ln_f"} <= names
    assert torch.equal(got, after)
    assert not compiled._executor.record_functions


def test_lamina_profile_prints_the_table_on_the_first_call() -> None:
    script = ("import torch, lamina\n"
              "from lamina.models import make_gpt2_stack\n"
              "m, (idx,) = make_gpt2_stack(batch=2, seq=16, d_model=64, n_heads=4, n_layers=1, vocab=96)\n"
              "c = lamina.compile(m, (idx,))\n"
              "with torch.no_grad():\n"
              "    assert torch.allclose(c(idx), m(idx), atol=1e-5)\n")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "LAMINA_PROFILE": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "lamina: profile of GPT2Stack" in done.stderr and "| linear h.0.mlp.c_fc | 1 |" in done.stderr


def test_profile_counts_16_bit_elements_as_two_bytes() -> None:
    model, idx = _stack()
    compiled = lamina.compile(model.to(torch.bfloat16), (idx,))
    with torch.no_grad():
        timeline = compiled.profile(idx)
    event = next(e for e in timeline.events if e.label == "linear h.0.mlp.c_fc")  # x [32, 64], w [256, 64], out [32, 256]
    assert event.nbytes == 2 * (32 * 64 + 256 * 64 + 32 * 256)
