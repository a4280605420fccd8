"""Tensor-parallel inference with lamina under torchrun: every rank compiles the same model and keeps its shard.

    torchrun --nproc-per-node=2 examples/tp_gpt2.py                      # one machine, two ranks
    torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST:29400 --rdzv-id=lamina examples/tp_gpt2.py   # on each of two machines

Prints the output's checksum on rank 0 (``--out FILE`` also saves the output there).
"""
from __future__ import annotations

import argparse

import torch

import lamina.distributed
from lamina.models.gpt2_stack import make_gpt2_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--overlap", default="", help="an overlap pass, e.g. 'overlap{chunks=4}'")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    lamina.distributed.init()
    model, (ids,) = make_gpt2_stack(batch=2, seq=16, n_layers=2)
    pipeline = "canonicalize,shard{tp=%d},%sfuse" % (torch.distributed.get_world_size(),
                                                     ns.overlap + "," if ns.overlap else "")
    fast = lamina.distributed.compile(model, (ids,), pipeline=pipeline)
    with torch.no_grad():
        out = fast(ids)
    if torch.distributed.get_rank() == 0:
        print(f"rank 0 of {torch.distributed.get_world_size()}: output {tuple(out.shape)}, sum {float(out.sum()):.6f}")
        if ns.out:
            torch.save(out, ns.out)
    # every rank leaves together: a rank that exits while its peer's gloo connection to it is still open
    # can make the peer abort ("Connection closed by peer") instead of shutting down cleanly
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
