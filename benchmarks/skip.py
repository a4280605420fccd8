"""Layer skipping on a trained character-level GPT: each schedule's predicted and measured decode speedup
against lamina's full model, held-out perplexity and top-1 agreement with the full model.

Usage: ``python benchmarks/skip.py [--layers 6] [--d-model 128] [--steps 1200] [--rounds 5]``

The model is trained (or read from ``~/.cache/lamina/bench``) as in ``benchmarks/quant_quality.py``.
Decode: batch 1, one token after a 48-position cache, ``lamina.compile`` of ``char_gpt.Decode`` with
the schedule's pipeline; medians of interleaved rounds of 200 steps. Perplexity and agreement: the
next 64K characters, 64-character windows, through ``lamina.compile`` of the whole model. "similarity"
removes as many blocks as the unified schedule of the same row, the ones ``lamina.calibrate`` finds
closest to the identity; "similarity, N attn / mlp" removes N attention or MLP sublayers alone; "exit S"
removes the last blocks (early exit) for a predicted speedup S.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, print_table  # noqa: E402
from quant_quality import trained_model  # noqa: E402

import lamina  # noqa: E402
from lamina.models.char_gpt import Decode, Prefill  # noqa: E402
from lamina.models.char_training import encode, stdlib_corpus  # noqa: E402


def skip_note(compiled: object) -> str:
    return next((h for h in compiled.graph.history if h.startswith("skip: removed")), "skip: removed 0")


def removed_count(compiled: object) -> int:
    return int(skip_note(compiled).split()[2])


def predicted(compiled: object) -> str:
    note = skip_note(compiled)
    return note.split("predicted speedup ")[1].split("x")[0] + "x" if "predicted speedup" in note else ""


def evaluate(model: torch.nn.Module, pipeline: str, stats: object, held_out: torch.Tensor,
             full_top1: torch.Tensor | None) -> tuple[float, torch.Tensor]:
    n = (len(held_out) - 1) // 64 // 64 * 64
    x, y = held_out[: n * 64].view(n, 64), held_out[1: n * 64 + 1].view(n, 64)
    compiled = lamina.compile(model, (x[:64],), pipeline=pipeline, calibration=stats, fallback=False)
    total, tops = 0.0, []
    with torch.inference_mode():
        for i in range(0, n, 64):
            logits = compiled(x[i: i + 64])
            total += float(F.cross_entropy(logits.flatten(0, 1), y[i: i + 64].flatten(), reduction="sum"))
            tops.append(logits.argmax(-1))
    return math.exp(total / (n * 64)), torch.cat(tops)


def setup(description: str, layers: int, d_model: int, steps: int, window: int = 64) -> tuple:
    """Parsed options (``--layers --d-model --steps --rounds --windows``), the trained model, the held-out text
    and its calibration (8 batches of 16 training windows of ``window`` characters)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--d-model", type=int, default=d_model)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--windows", type=int, default=32, help="held-out windows (skip_runtime.py)")
    ns = parser.parse_args()
    torch.set_num_threads(2)
    text = stdlib_corpus(1_064_000)
    data, held_out = encode(text[:1_000_000]), encode(text[1_000_000:])
    print(f"machine: {machine()}")
    model = trained_model(ns.layers, ns.d_model, ns.steps, data)
    g = torch.Generator().manual_seed(7)
    starts = torch.randint(0, len(data) - window - 1, (8, 16), generator=g)
    batches = [torch.stack([data[i: i + window] for i in row]) for row in starts]
    return ns, model, held_out, lamina.calibrate(model, batches)


def main() -> None:
    ns, model, held_out, stats = setup(__doc__.splitlines()[0], 6, 128, 1200)
    prompt = held_out[:48].view(1, 48)  # the trained model has 64 positions
    with torch.inference_mode():
        _, keys, values = Prefill(model)(prompt)
    token = held_out[48:49].view(1, 1)
    schedules = {"full": "canonicalize,fuse"}
    for s in (1.25, 1.5, 2.0):
        schedules[f"unified {s:g}"] = f"canonicalize,skip{{speedup={s}}},fuse"
    decoders = {}
    for name, pipeline in list(schedules.items()):
        decoders[name] = lamina.compile(Decode(model), (token, keys, values), pipeline=pipeline, fallback=False)
        if name.startswith("unified"):
            n = removed_count(decoders[name])
            similar = f"similarity, {n} blocks"
            schedules[similar] = f"canonicalize,skip{{policy=similarity,drop=block:{n}}},fuse"
            decoders[similar] = lamina.compile(Decode(model), (token, keys, values), pipeline=schedules[similar],
                                               calibration=stats, fallback=False)
    for kind in ("attn", "mlp"):  # sublayers alone (What Matters in Transformers): a third and half of them
        for n in (ns.layers // 3, ns.layers // 2):
            name = f"similarity, {n} {kind}"
            schedules[name] = f"canonicalize,skip{{policy=similarity,drop={kind}:{n}}},fuse"
            decoders[name] = lamina.compile(Decode(model), (token, keys, values), pipeline=schedules[name],
                                            calibration=stats, fallback=False)
    for s in (1.5, 2.0):
        name = f"exit {s:g}"
        schedules[name] = f"canonicalize,skip{{policy=exit,speedup={s}}},fuse"
        decoders[name] = lamina.compile(Decode(model), (token, keys, values), pipeline=schedules[name],
                                        fallback=False)
    times: dict[str, list[float]] = {name: [] for name in decoders}
    with torch.inference_mode():
        for fn in decoders.values():
            fn(token, keys, values)
        for _ in range(ns.rounds):
            for name, fn in decoders.items():
                start = time.perf_counter()
                for _ in range(200):
                    fn(token, keys, values)
                times[name].append((time.perf_counter() - start) / 200 * 1e6)
    full_ppl, full_top1 = evaluate(model, schedules["full"], stats, held_out, None)
    base = sorted(times["full"])[len(times["full"]) // 2]
    rows = []
    for name, pipeline in schedules.items():
        us = sorted(times[name])[len(times[name]) // 2]
        ppl, top1 = (full_ppl, full_top1) if name == "full" else evaluate(model, pipeline, stats, held_out, full_top1)
        target = name.split()[1] + "x" if name.startswith(("unified", "exit")) else ""
        rows.append((name, str(removed_count(decoders[name])), target, predicted(decoders[name]), f"{us:.0f}",
                     f"{base / us:.2f}x", f"{ppl:.3f}",
                     f"{(ppl / full_ppl - 1) * 100:+.1f}%", f"{(top1 == full_top1).float().mean().item():.1%}"))
    print(f"\nCharGPT {ns.layers} layers, d_model {ns.d_model}; decode: batch 1 after a 48-position cache")
    print_table(["schedule", "removed", "target", "predicted", "us/step", "measured", "perplexity", "vs full",
                 "top-1 = full"],
                rows)


if __name__ == "__main__":
    main()
