"""SNLP regularization experiment: a character-level GPT trained with and without the regularizer.

    python benchmarks/snlp_experiment.py [--layers 6] [--d-model 128] [--steps 600] [--weight 1.0] [--save DIR]

Both models start from the same initialisation and see the same batches (the Python standard
library's source, offline). Reported on held-out text: sequential perplexity and Newton
perplexity with K = 1, 2, 3 iterations over the whole stack (one chunk), plus the relative error
of Newton's final hidden state. ``--save`` keeps the trained weights (``benchmarks/newton.py
--checkpoint`` reads them).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, print_table  # noqa: E402
from lamina.models.char_gpt import CharGPT  # noqa: E402
from lamina.models.char_training import (VOCAB, TrainConfig, char_gpt_deltas, encode, perplexity,  # noqa: E402
                                         stdlib_corpus, train)
from lamina.snlp import SNLPRegularizer, newton_forward  # noqa: E402


@torch.no_grad()
def hidden_error(model: CharGPT, x: torch.Tensor, iters: int) -> float:
    want = newton_forward(char_gpt_deltas(model), model.embed(x), len(model.h))
    got = newton_forward(char_gpt_deltas(model), model.embed(x), iters)
    return float((got - want).norm() / want.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--weight", type=float, default=1.0, help="regularizer weight")
    parser.add_argument("--reg-iters", type=int, nargs="+", default=[1, 2], help="K values the regularizer trains")
    parser.add_argument("--train-chars", type=int, default=1_000_000)
    parser.add_argument("--eval-chars", type=int, default=64_000)
    parser.add_argument("--save", type=Path, help="directory for the trained weights")
    ns = parser.parse_args()
    torch.manual_seed(0)
    text = stdlib_corpus(ns.train_chars + ns.eval_chars)
    data = encode(text[: ns.train_chars])
    held_out = encode(text[ns.train_chars:])
    init = CharGPT(VOCAB, ns.d_model, ns.heads, ns.layers, max_len=max(ns.seq, 64))
    config = TrainConfig(ns.steps, ns.batch, ns.seq)
    print(f"machine: {machine()}")
    print(f"CharGPT {ns.layers} layers, d_model {ns.d_model}; {ns.steps} steps of {ns.batch} x {ns.seq} characters; "
          f"train {len(data)} chars, held out {len(held_out)} (stdlib source); regularizer weight {ns.weight}, "
          f"K in {ns.reg_iters}")
    rows = []
    probe = held_out[: 8 * ns.seq].view(8, ns.seq)
    for name, reg in (("baseline", None), ("SNLP-regularized", SNLPRegularizer(tuple(ns.reg_iters), 0, ns.weight))):
        model = copy.deepcopy(init)
        result = train(model, data, config, reg)
        ppl = [perplexity(model, held_out, ns.seq)] + [perplexity(model, held_out, ns.seq, k) for k in (1, 2, 3)]
        errs = [hidden_error(model, probe, k) for k in (1, 2, 3)]
        rows.append([name, f"{result.seconds:.0f}", *(f"{p:.2f}" for p in ppl), *(f"{e:.3f}" for e in errs)])
        if ns.save:
            ns.save.mkdir(parents=True, exist_ok=True)
            torch.save({"config": vars(ns) | {"save": str(ns.save)}, "state": model.state_dict()},
                       ns.save / f"{name.split('-')[0].lower()}.pt")
        print(f"{name}: trained in {result.seconds:.0f} s, final loss {result.final_loss:.3f}", flush=True)
    print_table(["model", "train s", "seq ppl", "K=1 ppl", "K=2 ppl", "K=3 ppl", "K=1 err", "K=2 err", "K=3 err"], rows)


if __name__ == "__main__":
    main()
