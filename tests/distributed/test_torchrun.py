"""torchrun launches: one node with two ranks, and two "nodes" on localhost joined by the c10d rendezvous."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

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


def test_torchrun_on_one_node(tmp_path) -> None:
    out = tmp_path / "out.pt"
    subprocess.run([*_torchrun("--nproc-per-node=2", f"--master-port={free_port()}"), "--out", str(out)],
                   check=True, timeout=300, capture_output=True)
    torch.testing.assert_close(torch.load(out), _want(), rtol=1e-5, atol=1e-5)


def test_two_nodes_on_localhost_with_the_c10d_rendezvous(tmp_path) -> None:
    out = tmp_path / "out.pt"
    endpoint = f"127.0.0.1:{free_port()}"
    common = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
              "--rdzv-id=lamina-test"]
    nodes = [subprocess.Popen([*_torchrun(*common, f"--node-rank={n}"), "--out", str(out),
                               "--overlap", "overlap{chunks=4}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err.decode()[-2000:]
    torch.testing.assert_close(torch.load(out), _want(), rtol=1e-5, atol=1e-5)
