"""What quantization costs in quality: held-out perplexity of a trained character-level GPT under lamina's
quantize pass, uniform formats and per-layer bits under a budget (importance-ranked, in model order, and
in reversed importance order).

Usage: ``python benchmarks/quant_quality.py [--layers 6] [--d-model 128] [--steps 1200] [--budget 5.0]``

The model (``lamina/models/char_gpt.py``) is trained on the Python standard library's source as in
``benchmarks/snlp_experiment.py`` (the weights are kept in ``~/.cache/lamina/bench`` so a second run
skips training); perplexity is measured on the next 64K characters, through ``lamina.compile`` with
each pipeline. Calibration: 8 batches of 16 x 64 training characters. The table gives the average bits
per weight of the linear layers (the tied embedding/LM head stays float32 in every row) and the bytes
of their weights, scales included.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, print_table  # noqa: E402

import lamina  # noqa: E402
from lamina.models.char_gpt import CharGPT  # noqa: E402
from lamina.models.char_training import VOCAB, TrainConfig, encode, stdlib_corpus, train  # noqa: E402


def trained_model(layers: int, d_model: int, steps: int, data: torch.Tensor) -> CharGPT:
    """The CharGPT trained for ``steps``; from the cache when an earlier run trained the same one."""
    path = Path.home() / ".cache" / "lamina" / "bench" / f"char_gpt_l{layers}_d{d_model}_s{steps}.pt"
    torch.manual_seed(0)
    model = CharGPT(VOCAB, d_model, 4, layers, max_len=64)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    result = train(model, data, TrainConfig(steps, 16, 64))
    print(f"trained in {result.seconds:.0f} s, final loss {result.final_loss:.3f}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def perplexity(compiled: object, held_out: torch.Tensor, batch: int, seq: int) -> float:
    n = (len(held_out) - 1) // seq // batch * batch
    x = held_out[: n * seq].view(n, seq)
    y = held_out[1: n * seq + 1].view(n, seq)
    total = 0.0
    with torch.inference_mode():
        for i in range(0, n, batch):
            logits = compiled(x[i: i + batch])
            total += float(F.cross_entropy(logits.flatten(0, 1), y[i: i + batch].flatten(), reduction="sum"))
    return math.exp(total / (n * seq))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--budget", type=float, default=5.0)
    parser.add_argument("--train-chars", type=int, default=1_000_000)
    parser.add_argument("--eval-chars", type=int, default=64_000)
    ns = parser.parse_args()
    torch.set_num_threads(2)
    text = stdlib_corpus(ns.train_chars + ns.eval_chars)
    data, held_out = encode(text[: ns.train_chars]), encode(text[ns.train_chars:])
    print(f"machine: {machine()}")
    model = trained_model(ns.layers, ns.d_model, ns.steps, data)
    g = torch.Generator().manual_seed(7)
    starts = torch.randint(0, len(data) - 65, (8, 16), generator=g)
    batches = [torch.stack([data[i: i + 64] for i in row]) for row in starts]
    stats = lamina.calibrate(model, batches)  # its default formats include 4-bit per channel
    b = ns.budget
    pipelines = {
        "fp32": "canonicalize,fuse",
        "int8 per-channel": "canonicalize,quantize{bits=8},fuse",
        "int4 g32": "canonicalize,quantize{bits=4,group=32},fuse",
        "int4 per-channel": "canonicalize,quantize{bits=4,group=0},fuse",
        f"budget {b:g}, by importance": f"canonicalize,quantize{{budget={b}}},fuse",
        f"budget {b:g}, in model order": f"canonicalize,quantize{{budget={b},rank=position}},fuse",
        f"budget {b:g}, reversed importance": f"canonicalize,quantize{{budget={b},rank=reversed}},fuse",
        f"budget {b:g} (4-bit per-channel), by importance": f"canonicalize,quantize{{budget={b},group=0}},fuse",
        f"budget {b:g} (4-bit per-channel), in model order":
            f"canonicalize,quantize{{budget={b},group=0,rank=position}},fuse",
        f"budget {b:g} (4-bit per-channel), reversed importance":
            f"canonicalize,quantize{{budget={b},group=0,rank=reversed}},fuse",
    }
    example = held_out[: 64 * 64].view(64, 64)
    rows = []
    for name, pipeline in pipelines.items():
        compiled = lamina.compile(model, (example,), pipeline=pipeline, calibration=stats, fallback=False)
        layers = [r for r in compiled.quantization]
        weights = {r.weight: stats.linears[r.weight].out_features * stats.linears[r.weight].in_features
                   for r in layers}
        bits = sum((r.fmt.bits if r.fmt else 32) * weights[r.weight] for r in layers) / sum(weights.values())
        nbytes = sum(r.nbytes for r in layers)
        mix = ", ".join(f"{sum(1 for r in layers if (r.fmt.bits if r.fmt else 32) == k)}x{k}" for k in (4, 8, 32))
        rows.append((name, f"{perplexity(compiled, held_out, 64, 64):.3f}", f"{bits:.2f}", f"{nbytes / 1e6:.2f}", mix))
        print(f"{name}: done", flush=True)
    print(f"\nCharGPT {ns.layers} layers, d_model {ns.d_model}, {ns.steps} training steps; held-out "
          f"{len(held_out)} characters")
    print_table(["pipeline", "perplexity", "bits/weight", "linear MB", "layers at 4/8/32 bits"], rows)


if __name__ == "__main__":
    main()
