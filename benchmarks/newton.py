"""Newton layer parallelism (SNLP) on a deep, narrow decoder: sequential vs Newton, prefill and decode.

    python benchmarks/newton.py [--layers 24] [--d-model 256] [--prompt 128] [--repeats 20]
                                [--checkpoint benchmarks/.snlp/snlp.pt] [--iters 1 2 3] [--chunks 4 8 24]

A CharGPT (batch 1) compiled by lamina sequentially and with ``newton{iters=K,chunk=C}`` at
block granularity, for a prefill of ``--prompt`` tokens and a single-token decode step after a
cache of that many tokens; eager PyTorch and torch.compile (inductor) run the sequential model
in the same, interleaved timing rounds. Per variant: median time, speedup over lamina's
sequential program, the relative error (Frobenius norm) of the final hidden state against
eager, and top-1 agreement of the logits with eager (prefill: every prompt position; decode:
``--decode-probes`` steps, each from the eager cache of a different held-out prefix).
Weights: random (the default init) or a ``--checkpoint`` saved by ``snlp_experiment.py --save``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import interleaved_medians, machine, print_table, timed  # noqa: E402
import lamina  # noqa: E402
from lamina.models.char_gpt import CharGPT, Decode, Prefill  # noqa: E402
from lamina.models.char_training import VOCAB, encode, stdlib_corpus  # noqa: E402


def load_model(ns: argparse.Namespace) -> tuple[CharGPT, str]:
    if ns.checkpoint:
        saved = torch.load(ns.checkpoint, weights_only=False)
        cfg = saved["config"]
        model = CharGPT(VOCAB, cfg["d_model"], cfg["heads"], cfg["layers"], max_len=max(cfg["seq"], 64))
        model.load_state_dict(saved["state"])
        return model.eval(), f"trained weights from {ns.checkpoint}"
    torch.manual_seed(0)
    return CharGPT(VOCAB, ns.d_model, ns.heads, ns.layers, max_len=2 * ns.prompt + 8).eval(), "random weights"


def _warm(fn, args):
    """``fn`` after one call (torch.compile compiles on its first call)."""
    fn(*args)
    return fn


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--iters", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 24])
    parser.add_argument("--decode-probes", type=int, default=16)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--skip-inductor", action="store_true")
    ns = parser.parse_args()
    torch.set_grad_enabled(False)
    model, weights = load_model(ns)
    layers = len(model.h)
    text = encode(stdlib_corpus(ns.prompt * (ns.decode_probes + 2), skip=2_000_000))
    prompt = text[: ns.prompt].view(1, -1)
    prefill, decode = Prefill(model, with_hidden=True).eval(), Decode(model, with_hidden=True).eval()
    _, keys, values, _ = prefill(prompt)
    token = text[ns.prompt: ns.prompt + 1].view(1, 1)
    # decode probes: other prefixes' caches and next tokens, all with a cache of ns.prompt tokens
    probes = []
    for i in range(ns.decode_probes):
        ids = text[(i + 1) * ns.prompt: (i + 2) * ns.prompt + 1].view(1, -1)
        _, k, v, _ = prefill(ids[:, :-1])
        probes.append((ids[:, -1:], k, v))
    print(f"machine: {machine()}")
    print(f"CharGPT {layers} layers, d_model {model.wte.weight.shape[1]}, batch 1, {weights}; prefill {ns.prompt} "
          f"tokens, decode 1 token after {ns.prompt}")
    variants = {"sequential": "canonicalize,fuse"}
    for iters in ns.iters:
        for chunk in ns.chunks:
            variants[f"K={iters} C={chunk}"] = f"canonicalize,newton{{iters={iters},chunk={chunk}}},newton-expand,fuse"
    for mode, module, args, checks in (("prefill", prefill, (prompt,), [(prompt,)]),
                                       ("decode", decode, (token, keys, values), probes)):
        runners = {"eager": module}
        compile_s = {}
        if not ns.skip_inductor:
            runners["inductor"], compile_s["inductor"] = timed(lambda m=module, a=args: _warm(torch.compile(m), a))
        for name, pipeline in variants.items():
            runners[name], compile_s[name] = timed(lambda p=pipeline, m=module, a=args: lamina.compile(m, a, pipeline=p))
        medians = interleaved_medians({name: lambda r=run, a=args: r(*a) for name, run in runners.items()}, ns.repeats)
        rows = []
        for name, run in runners.items():
            errs, agree, total = [], 0, 0
            for probe in checks:
                want, got = module(*probe), run(*probe)
                errs.append(rel(got[3], want[3]))
                agree += int((got[0].argmax(-1) == want[0].argmax(-1)).sum())
                total += want[0].shape[0] * want[0].shape[1]
            t = medians[name]
            rows.append([name, f"{t * 1e3:.2f}", f"{medians['sequential'] / t:.2f}x", f"{medians['eager'] / t:.2f}x",
                         f"{max(errs):.1e}", f"{100 * agree / total:.1f}%", f"{compile_s.get(name, 0):.1f}"])
        print(f"\n{mode} ({ns.repeats} interleaved rounds, medians)")
        print_table(["variant", "ms", "vs lamina seq", "vs eager", "hidden rel err", "top-1 agree", "compile s"], rows)


if __name__ == "__main__":
    main()
