"""Run-time layer skipping on a trained character-level GPT: skip{policy=router} (FiRST's per-sequence
routers) and skip{policy=temporal} (LoRA-Drop's reused updates) against lamina's full model.

Usage: ``python benchmarks/skip_runtime.py [--layers 24] [--d-model 256] [--steps 600] [--rounds 5]``

The model is trained (or read from ``~/.cache/lamina/bench``) as in ``benchmarks/quant_quality.py``.
Both policies keep state between calls, so they are measured as they are used: ``lamina.compile`` of
``char_gpt.Prefill`` and ``Decode`` sharing one ``lamina.ProgramState``, a 16-character prompt, then
one character per call.

- speed: per schedule, the prompt's prefill, then 48 decode steps (the cache growing from 16 to 64
  positions); medians of interleaved rounds, per decode step. The router's decisions are those of the
  first held-out prompt; temporal's cost averages refresh and reuse calls.
- calibration: 8 batches of 16 training windows of 64 characters (``skip.setup``).
- quality: 32 held-out windows of 64 characters, each prefilled with its first 16 and decoded with the
  true next characters (teacher forcing); perplexity of the 48 decoded positions and how often the top-1
  choice equals the full model's, and for the router the share of routed blocks the windows skipped.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.export import Dim

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_table  # noqa: E402
from skip import setup  # noqa: E402

import lamina  # noqa: E402
from lamina.models.char_gpt import Decode, Prefill  # noqa: E402

PROMPT, WINDOW = 16, 64


def compiled_pair(model: torch.nn.Module, pipeline: str, stats: object, prompt: torch.Tensor) -> tuple:
    """The prefill and decode modules for ``pipeline``, sharing one program state."""
    state = lamina.ProgramState()
    with torch.inference_mode():
        _, keys, values = Prefill(model)(prompt)
    past = Dim("past", max=WINDOW)
    prefill = lamina.compile(Prefill(model), (prompt,), pipeline=pipeline, calibration=stats, state=state,
                             fallback=False)
    decode = lamina.compile(Decode(model), (prompt[:, :1], keys, values), pipeline=pipeline, calibration=stats,
                            state=state, fallback=False, dynamic_shapes=(None, {3: past}, {3: past}))
    return prefill, decode, state


def run_window(pair: tuple, window: torch.Tensor) -> torch.Tensor:
    """Logits of positions PROMPT-1 .. WINDOW-2 (predicting PROMPT .. WINDOW-1) of ``window`` [1, WINDOW]."""
    prefill, decode, state = pair
    state.reset()
    logits, keys, values = prefill(window[:, :PROMPT])
    out = [logits[:, -1:]]
    for i in range(PROMPT, WINDOW - 1):
        logits, k, v = decode(window[:, i:i + 1], keys, values)
        keys, values = torch.cat([keys, k], 3), torch.cat([values, v], 3)
        out.append(logits)
    return torch.cat(out, 1)


def skipped_share(state: object) -> float:
    """The share of routed blocks the current sequence skips (0 for temporal)."""
    routes = [t for k, t in state.tensors.items() if k.startswith("route.")]
    return sum(int((t == 0).sum()) for t in routes) / len(routes) if routes else 0.0


def main() -> None:
    ns, model, held_out, stats = setup(__doc__.splitlines()[0], 24, 256, 600)
    windows = [held_out[i * WINDOW: (i + 1) * WINDOW].view(1, WINDOW) for i in range(ns.windows)]
    schedules = {"full": "canonicalize,fuse"}
    for s in (1.25, 1.5, 2.0):
        schedules[f"router {s:g}"] = f"canonicalize,skip{{policy=router,speedup={s}}},fuse"
    for p in (2, 4):
        schedules[f"temporal {p}"] = f"canonicalize,skip{{policy=temporal,period={p}}},fuse"
    pairs = {name: compiled_pair(model, pipeline, stats, windows[0][:, :PROMPT]) for name, pipeline in schedules.items()}
    times: dict[str, list[float]] = {name: [] for name in pairs}
    with torch.inference_mode():
        for pair in pairs.values():
            run_window(pair, windows[0])
        for _ in range(ns.rounds):
            for name, pair in pairs.items():
                start = time.perf_counter()
                run_window(pair, windows[0])
                times[name].append((time.perf_counter() - start) / (WINDOW - PROMPT) * 1e6)
        results = {}
        for name, pair in pairs.items():
            logits, shares = [], []
            for w in windows:
                logits.append(run_window(pair, w))
                shares.append(skipped_share(pair[2]))
            results[name] = (torch.cat(logits), sum(shares) / len(shares))
    targets = torch.cat([w[:, PROMPT:] for w in windows])
    full_logits = results["full"][0]
    full_ppl = math.exp(float(F.cross_entropy(full_logits.flatten(0, 1), targets.flatten())))
    base = sorted(times["full"])[len(times["full"]) // 2]
    rows = []
    for name in schedules:
        logits, share = results[name]
        us = sorted(times[name])[len(times[name]) // 2]
        ppl = math.exp(float(F.cross_entropy(logits.flatten(0, 1), targets.flatten())))
        agree = (logits.argmax(-1) == full_logits.argmax(-1)).float().mean().item()
        target = name.split()[1] + "x" if name.startswith("router") else ""
        rows.append((name, target, f"{share:.0%}" if name.startswith("router") else "", f"{us:.0f}",
                     f"{base / us:.2f}x", f"{ppl:.3f}", f"{(ppl / full_ppl - 1) * 100:+.1f}%", f"{agree:.1%}"))
    print(f"\nCharGPT {ns.layers} layers, d_model {ns.d_model}; batch 1, {PROMPT}-character prompt, "
          f"{WINDOW - PROMPT} decode steps; quality on {ns.windows} held-out windows")
    print_table(["schedule", "target", "skipped", "us/step", "measured", "perplexity", "vs full", "top-1 = full"],
                rows)


if __name__ == "__main__":
    main()
