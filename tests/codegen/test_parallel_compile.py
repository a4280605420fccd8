"""New kernels compile in worker processes (codegen/parallel_compile.py); the parent's first call loads
them from Numba's cache, and a worker that fails only means the parent compiles that kernel itself."""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

import lamina
from lamina.codegen.cache import KernelCache
from lamina.codegen.cpu_numba import MODULE_HEADER
from lamina.codegen.parallel_compile import CompileJob, compile_in_workers, worker_count
from lamina.runtime.cpu import CpuExecutor


class ThreeKernels(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.tanh(x) * 3.0 + 1.0
        b = torch.softmax(a @ a.transpose(0, 1), dim=-1)
        return a, b, torch.relu(b).sum(dim=0) - x.mean()


def _executor(tmp_path, x: torch.Tensor):
    graph = lamina.run_pipeline(lamina.trace(ThreeKernels(), (x,)), "canonicalize,fuse")
    return CpuExecutor(graph, KernelCache(tmp_path), poison=True)


def test_new_kernels_compile_in_workers_and_load_on_first_call(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("LAMINA_COMPILE_WORKERS", "2")
    x = torch.randn(64, 48)
    with caplog.at_level(logging.INFO, logger="lamina.compile"):
        executor = _executor(tmp_path, x)
    functions = {ck.kernel.name: ck.fn for ck in executor.kernels.values()}
    assert len(functions) >= 2
    assert any("compiled in worker processes" in r.getMessage() and f"({len(functions)} compiled" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    got = executor([x], {})
    want = ThreeKernels()(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    for fn in functions.values():  # loaded from what the workers wrote: no compile in this process
        assert sum(fn.stats.cache_hits.values()) == 1 and not sum(fn.stats.cache_misses.values()), fn.stats


def test_without_workers_the_parent_compiles_on_first_call(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAMINA_COMPILE_WORKERS", "1")
    x = torch.randn(16, 8)
    executor = _executor(tmp_path, x)
    for g, w in zip(executor([x], {}), ThreeKernels()(x)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert all(sum(ck.fn.stats.cache_misses.values()) == 1 for ck in executor.kernels.values())


def test_a_failing_job_is_reported_and_left_to_the_parent(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("LAMINA_COMPILE_WORKERS", "2")
    cache = KernelCache(tmp_path)
    source = MODULE_HEADER + "@numba.njit(cache=True)\ndef k_twice(a):\n    a[0] = a[0] * 2\n"
    module = cache.load("k_twice", source)
    good = CompileJob(str(cache.loaded["k_twice"]), "lamina_kernel_k_twice", "k_twice", ("a:float32",))
    bad = CompileJob(str(cache.loaded["k_twice"]), "lamina_kernel_k_twice", "k_missing", ("a:float32",))
    with caplog.at_level(logging.WARNING, logger="lamina.compile"):
        assert compile_in_workers([good, bad]) == 1
    assert any("k_missing" in r.getMessage() for r in caplog.records)
    a = np.ones(1, np.float32)
    module.k_twice(a)
    assert a[0] == 2 and sum(module.k_twice.stats.cache_hits.values()) == 1


def test_worker_count_reads_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("LAMINA_COMPILE_WORKERS", "3")
    assert worker_count(10) == 3 and worker_count(2) == 2
    monkeypatch.setenv("LAMINA_COMPILE_WORKERS", "many")
    try:
        worker_count(4)
    except ValueError as e:
        assert "LAMINA_COMPILE_WORKERS" in str(e)
    else:
        raise AssertionError("a bad LAMINA_COMPILE_WORKERS was accepted")


def test_a_worker_that_cannot_start_leaves_every_kernel_to_the_parent(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("LAMINA_COMPILE_WORKERS", "2")
    monkeypatch.setattr("lamina.codegen.parallel_compile.sys.executable", str(tmp_path / "no-such-python"))
    jobs = [CompileJob(str(tmp_path / f"k{i}.py"), f"m{i}", f"k{i}", ("a:float32",)) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="lamina.compile"):
        assert compile_in_workers(jobs) == 0
    assert any("could not start" in r.getMessage() for r in caplog.records)
