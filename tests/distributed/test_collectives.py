"""Collective ops: the simulated group's meaning, and the runtime's torch.distributed calls in 2 gloo processes."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lamina.distributed import DistributedError, spawn
from lamina.ir.group import interpret_group
from lamina.ir.interpreter import InterpreterError, interpret
from lamina.ir.parser import parse
from lamina.ir.errors import IRParseError

GRAPH = """graph @g(%x: f32[4,6]) {
  %a = all_reduce(%x) {group=2} : f32[4,6]
  %s = reduce_scatter_start(%a) {group=2, dim=1} : f32[4,3]
  %g = all_gather_start(%x) {group=2, dim=0} : f32[8,6]
  %e = exp(%x) : f32[4,6]
  %w = wait(%s) : f32[4,3]
  %h = wait(%g) : f32[8,6]
  %t = mul(%h, %h) : f32[8,6]
  return %a, %w, %t, %e
}
"""


def _inputs(rank: int) -> np.ndarray:
    return np.random.default_rng(rank).standard_normal((4, 6)).astype(np.float32)


def _run_rank(rank: int, world: int) -> list[np.ndarray]:
    from lamina.backends import backend
    from lamina.options import CompileOptions
    from lamina.passes.manager import backend_pipeline, run_steps

    lowered = run_steps(parse(GRAPH), backend_pipeline(None, "cpu")).graph
    executor = backend("cpu").make_executor(lowered, CompileOptions(poison=True))
    return [t.numpy() for t in executor([torch.from_numpy(_inputs(rank))], {})]


def test_the_simulated_group_sums_scatters_and_gathers() -> None:
    graph = parse(GRAPH)
    xs = [_inputs(r) for r in range(2)]
    out = interpret_group(graph, [[x] for x in xs], [{}, {}])
    total = xs[0] + xs[1]
    for rank in range(2):
        np.testing.assert_allclose(out[rank][0], total, rtol=1e-6)
        np.testing.assert_allclose(out[rank][1], 2 * total[:, 3 * rank: 3 * rank + 3], rtol=1e-6)
        np.testing.assert_allclose(out[rank][2], np.concatenate(xs) ** 2, rtol=1e-6)
    with pytest.raises(InterpreterError, match="needs the other ranks' values"):
        interpret(graph, [xs[0]])
    with pytest.raises(InterpreterError, match="for a group of 2 ranks, the simulated group has 3"):
        interpret_group(graph, [[x] for x in xs + xs[:1]], [{}, {}, {}])


def test_started_collectives_are_read_by_waits_only() -> None:
    with pytest.raises(IRParseError, match="in flight: only a wait may read it"):
        parse(GRAPH.replace("%w = wait(%s)", "%w = neg(%s)"))
    with pytest.raises(IRParseError, match="does not split into 2 equal parts"):
        parse(GRAPH.replace("f32[4,6]) {", "f32[4,5]) {").replace("f32[4,6]", "f32[4,5]"))


def test_two_gloo_processes_equal_the_simulated_group() -> None:
    got = spawn(_run_rank, 2, timeout_s=120)
    want = interpret_group(parse(GRAPH), [[_inputs(r)] for r in range(2)], [{}, {}])
    for rank in range(2):
        for g, w in zip(got[rank], want[rank]):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_the_program_refuses_a_missing_or_wrong_process_group() -> None:
    from lamina.runtime.collectives import CollectiveError

    with pytest.raises(CollectiveError, match="sharded for 2 ranks: run it in a torch.distributed process group"):
        _run_rank(0, 1)


def _fail_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank one gives up")
    return _run_rank(rank, world)


def _die_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        os._exit(3)  # dies without a word, mid-step for the others
    return _run_rank(rank, world)


def test_a_failing_rank_fails_the_call_with_its_error() -> None:
    with pytest.raises(DistributedError, match="rank 1 of 2 failed: ValueError: rank one gives up"):
        spawn(_fail_on_rank_one, 2, timeout_s=60)


def test_a_rank_that_dies_mid_step_does_not_hang_the_others() -> None:
    with pytest.raises(DistributedError, match="rank 0 of 2 failed: .*another rank stopped|gave no result"):
        spawn(_die_on_rank_one, 2, timeout_s=30)


def test_a_simulated_link_carries_collectives_in_flight_one_after_another() -> None:
    """Two all-reduces started together on a 1 GB/s link: the second is delivered after both have crossed
    it (2 MB each, 2 (N-1)/N of the bytes per rank on 2 ranks), not with the first; one started after the
    link went idle takes its own time only."""
    from lamina.runtime.collectives import SlowLink

    link = SlowLink(1.0)
    assert link.delivered_at("all_reduce", 2_000_000, 2, now=10.0) == pytest.approx(10.002)
    assert link.delivered_at("all_reduce", 2_000_000, 2, now=10.0) == pytest.approx(10.004)
    assert link.delivered_at("all_gather", 2_000_000, 2, now=10.001) == pytest.approx(10.005)  # queued
    assert link.delivered_at("all_gather", 2_000_000, 2, now=20.0) == pytest.approx(20.001)  # idle link
