"""HuggingFace models through torch.compile: eager vs inductor vs lamina, compile and forward time.

    python benchmarks/hf_models.py [--repeats N] [--block B] [--only ARCH ...] [--batch B] [--seq T] [--layers L] [--width D]

Per architecture (tiny random-weight configs, no downloads): cold compile time (the first call
through ``torch.compile``, which traces and compiles, with empty caches for both compilers: no
inductor cache directory or FX graph cache, no lamina kernel cache) and the median forward time of a
prompt of ``batch x seq`` tokens (``use_cache=False``) under ``torch.no_grad``, the contenders
taking turns (``--repeats`` rounds; in each a contender runs one untimed call and ``--block`` timed
ones, as a model called repeatedly runs: ``common.interleaved_medians``); plus lamina's largest
relative error on the output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import cold_caches, interleaved_medians, machine, print_table, timed  # noqa: E402
from lamina.dynamo import LaminaBackend  # noqa: E402
from lamina.models.hf import HF_ARCHITECTURES, tiny_hf_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--block", type=int, default=1, help="timed calls per turn, after an untimed one (1: "
                        "every call follows another contender's, none untimed)")
    parser.add_argument("--only", nargs="*", choices=HF_ARCHITECTURES)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    ns = parser.parse_args()
    print(f"machine: {machine()}; batch {ns.batch}, seq {ns.seq}, {ns.layers} layers, width {ns.width}; "
          f"{ns.repeats} rounds of {ns.block} timed call(s) per contender")
    rows = []
    for arch in ns.only or HF_ARCHITECTURES:
        model = tiny_hf_model(arch, layers=ns.layers, width=ns.width)
        ids = torch.randint(1, 128, (ns.batch, ns.seq))
        kwargs = {} if arch == "bert" else {"use_cache": False}
        with torch.no_grad():
            want = model(ids, **kwargs)
            want = want.logits if hasattr(want, "logits") else want.last_hidden_state
            compiled: dict[str, object] = {}
            compile_s: dict[str, float] = {}
            torch._dynamo.reset()
            for name, backend in (("inductor", "inductor"), ("lamina", LaminaBackend())):
                fn = torch.compile(model, backend=backend)
                with cold_caches():
                    out, compile_s[name] = timed(lambda: fn(ids, **kwargs))
                compiled[name] = fn
            got = out.logits if hasattr(out, "logits") else out.last_hidden_state
            err = float((got - want).abs().max() / want.abs().max())
            medians = interleaved_medians({"eager": lambda: model(ids, **kwargs),
                                           "inductor": lambda: compiled["inductor"](ids, **kwargs),
                                           "lamina": lambda: compiled["lamina"](ids, **kwargs)}, ns.repeats,
                                          block=ns.block)
        t = medians
        row = [arch, f"{t['eager'] * 1e3:.2f}", f"{t['inductor'] * 1e3:.2f}", f"{t['lamina'] * 1e3:.2f}",
               f"{t['eager'] / t['lamina']:.2f}x", f"{t['inductor'] / t['lamina']:.2f}x",
               f"{compile_s['inductor']:.1f}", f"{compile_s['lamina']:.1f}", f"{err:.1e}"]
        rows.append(row)
        print(" ".join(row), flush=True)
    print()
    print_table(["model", "eager ms", "inductor ms", "lamina ms", "vs eager", "vs inductor",
                 "inductor cold compile s", "lamina cold compile s", "lamina err"], rows)


if __name__ == "__main__":
    main()
