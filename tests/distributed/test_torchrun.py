"""torchrun launches: one node with two ranks, and two "nodes" on localhost joined by the c10d rendezvous."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.distributed import TCPStore

import lamina
from lamina.distributed import free_port
from lamina.models.gpt2_stack import make_gpt2_stack

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tp_gpt2.py"


def _want() -> torch.Tensor:
    model, (ids,) = make_gpt2_stack(batch=2, seq=16, n_layers=2)
    with torch.no_grad():
        return lamina.compile(model, (ids,))(ids)


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, str(EXAMPLE)]


# torch elastic's agents lose their rendezvous store now and then when the machine is saturated (the
# test suite's other worker on a 2-core CI machine): the agent says so, or the store's client aborts
# on a read that timed out. About one launch in ten under such load also had a rank abort in torch's
# C++ with "terminate called without an active exception" and no Python error (not reproduced outside
# pytest in 26 launches). Those launches, and only those failures, are retried (twice at most), with a
# warning that carries what the failed launch printed
RETRIED = ("RendezvousConnectionError", "recvValueWithTimeout failed", "terminate called without an active exception")


def _launch(commands: list[list[str]]) -> list[str]:
    """Run ``commands`` at once; the stderr of each that failed. Each rank's kernels run on one thread, as
    torchrun sets for several processes on one machine: two ranks and the suite's other worker on 2 cores,
    each with a team of spinning OpenMP threads, slowed each other down until an agent's store read timed
    out (300 s; a launch takes 7-11 s)."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "OMP_NUM_THREADS": "1"}  # PYTHONFAULTHANDLER: a rank
    # that aborts prints its threads' Python stacks
    nodes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for c in commands]
    errors = []
    for node in nodes:
        _, err = node.communicate(timeout=300)
        if node.returncode != 0:
            errors.append(err.decode())
    return errors


def _run_launch(make: Callable[[], list[list[str]]]) -> None:
    errors = _launch(make())
    for _ in range(2):
        if not errors or not all(any(known in e for known in RETRIED) for e in errors):
            break
        warnings.warn(f"torchrun launch retried after a known torch failure:\n{_summary(errors[0])}")
        errors = _launch(make())  # fresh ports and rendezvous
    assert not errors, _summary(errors[0])


def _summary(stderr: str) -> str:
    """The lines of a failed launch that say why (a rank's exception or abort), then the launcher's tail."""
    lines = stderr.splitlines()
    why = [line for line in lines if any(mark in line for mark in ("Error", "error:", "terminate called", "what()"))]
    fault = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    stacks = lines[fault:fault + 60] if fault is not None else []
    return "\n".join(why[:20] + stacks) + "\n...\n" + stderr[-1500:]


def test_torchrun_on_one_node(tmp_path) -> None:
    out = tmp_path / "out.pt"
    _run_launch(lambda: [[*_torchrun("--nproc-per-node=2", f"--master-port={free_port()}"), "--out", str(out)]])
    torch.testing.assert_close(torch.load(out), _want(), rtol=1e-5, atol=1e-5)


def test_two_nodes_on_localhost_with_the_c10d_rendezvous(tmp_path) -> None:
    out = tmp_path / "out.pt"
    stores: list[TCPStore] = []

    def commands() -> list[list[str]]:
        # the test hosts the rendezvous store (neither agent does: is_host=false), so that it outlives both;
        # when one agent hosted it and exited first, the other could lose it while shutting down
        port = free_port()
        stores[:] = [TCPStore("127.0.0.1", port, is_master=True, multi_tenant=True, wait_for_workers=False)]
        common = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", "--rdzv-conf=is_host=false",
                  f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lamina-test"]
        return [[*_torchrun(*common, f"--node-rank={n}"), "--out", str(out), "--overlap", "overlap{chunks=4}"]
                for n in range(2)]

    _run_launch(commands)
    torch.testing.assert_close(torch.load(out), _want(), rtol=1e-5, atol=1e-5)
