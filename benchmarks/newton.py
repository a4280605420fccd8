"""Newton layer parallelism (SNLP) on a deep, narrow decoder: sequential vs Newton, prefill and decode.

    python benchmarks/newton.py [--layers 24] [--d-model 256] [--prompt 128] [--repeats 20]
                                [--checkpoint A.pt [B.pt ...]] [--iters 1 2 3] [--chunks 4 8 24]

A CharGPT (batch 1) compiled by lamina sequentially and with ``newton{iters=K,chunk=C}`` at
block granularity, for a prefill of ``--prompt`` tokens and a single-token decode step after a
cache of that many tokens; eager PyTorch and torch.compile (inductor) run the sequential model
in the same interleaved timing rounds. Per variant: median time and speedups (timed on the
first model: weights do not change the work), then per model the relative error (Frobenius
norm) of the final hidden state against eager and the top-1 agreement of the logits with
eager (prefill: every prompt position; decode: ``--decode-probes`` steps, each from the eager
cache of a different held-out prefix). Models: random weights (the default init) or
``--checkpoint`` files saved by ``snlp_experiment.py --save``.
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


def load_models(ns: argparse.Namespace) -> list[tuple[str, CharGPT]]:
    if not ns.checkpoint:
        torch.manual_seed(0)
        return [("random", CharGPT(VOCAB, ns.d_model, ns.heads, ns.layers, max_len=2 * ns.prompt + 8).eval())]
    models = []
    for path in ns.checkpoint:
        saved = torch.load(path, weights_only=False)
        cfg = saved["config"]
        model = CharGPT(VOCAB, cfg["d_model"], cfg["heads"], cfg["layers"], max_len=max(cfg["seq"], 64))
        model.load_state_dict(saved["state"])
        models.append((path.stem, model.eval()))
    return models


def _warm(fn, args):
    """``fn`` after one call (torch.compile compiles on its first call)."""
    fn(*args)
    return fn


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def accuracy(module: torch.nn.Module, run, checks) -> tuple[float, float]:
    """(largest hidden-state relative error, top-1 agreement in %) of ``run`` against ``module``."""
    errs, agree, total = [], 0, 0
    for probe in checks:
        want, got = module(*probe), run(*probe)
        errs.append(rel(got[3], want[3]))
        agree += int((got[0].argmax(-1) == want[0].argmax(-1)).sum())
        total += want[0].shape[0] * want[0].shape[1]
    return max(errs), 100 * agree / total


def workloads(model: CharGPT, text: torch.Tensor, ns: argparse.Namespace) -> list[tuple]:
    """(mode, module, timing args, accuracy probes) for prefill and decode."""
    prompt = text[: ns.prompt].view(1, -1)
    prefill, decode = Prefill(model, with_hidden=True).eval(), Decode(model, with_hidden=True).eval()
    _, keys, values, _ = prefill(prompt)
    probes = []  # other prefixes' caches and next tokens, all with a cache of ns.prompt tokens
    for i in range(ns.decode_probes):
        ids = text[(i + 1) * ns.prompt: (i + 2) * ns.prompt + 1].view(1, -1)
        _, k, v, _ = prefill(ids[:, :-1])
        probes.append((ids[:, -1:], k, v))
    token = text[ns.prompt: ns.prompt + 1].view(1, 1)
    return [("prefill", prefill, (prompt,), [(prompt,)]), ("decode", decode, (token, keys, values), probes)]


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
    parser.add_argument("--checkpoint", type=Path, nargs="+")
    parser.add_argument("--skip-inductor", action="store_true")
    ns = parser.parse_args()
    torch.set_grad_enabled(False)
    models = load_models(ns)
    text = encode(stdlib_corpus(ns.prompt * (ns.decode_probes + 2), skip=2_000_000))
    first = models[0][1]
    print(f"machine: {machine()}")
    print(f"CharGPT {len(first.h)} layers, d_model {first.wte.weight.shape[1]}, batch 1, models "
          f"{', '.join(name for name, _ in models)}; prefill {ns.prompt} tokens, decode 1 token after {ns.prompt}")
    variants = {"sequential": "canonicalize,fuse"}
    for iters in ns.iters:
        for chunk in ns.chunks:
            variants[f"K={iters} C={chunk}"] = f"canonicalize,newton{{iters={iters},chunk={chunk}}},newton-expand,fuse"
    per_model = [workloads(model, text, ns) for _, model in models]
    for w, (mode, module, args, _) in enumerate(per_model[0]):
        runners: dict[str, list] = {"eager": [m[w][1] for m in per_model]}
        compile_s = {}
        if not ns.skip_inductor:
            fn, compile_s["inductor"] = timed(lambda: _warm(torch.compile(module), args))
            runners["inductor"] = [fn] + [torch.compile(m[w][1]) for m in per_model[1:]]
        for name, pipeline in variants.items():
            first_program, compile_s[name] = timed(lambda p=pipeline: lamina.compile(module, args, pipeline=p))
            runners[name] = [first_program] + [lamina.compile(m[w][1], m[w][2], pipeline=pipeline) for m in per_model[1:]]
        medians = interleaved_medians({name: lambda r=run[0]: r(*args) for name, run in runners.items()}, ns.repeats)
        rows = []
        for name, runs in runners.items():
            t = medians[name]
            row = [name, f"{t * 1e3:.2f}", f"{medians['sequential'] / t:.2f}x", f"{medians['eager'] / t:.2f}x",
                   f"{compile_s.get(name, 0):.1f}"]
            for m, run in zip(per_model, runs):
                err, agree = accuracy(m[w][1], run, m[w][3])
                row += [f"{err:.1e}", f"{agree:.1f}%"]
            rows.append(row)
        print(f"\n{mode} ({ns.repeats} interleaved rounds, medians)")
        headers = ["variant", "ms", "vs lamina seq", "vs eager", "compile s"]
        for name, _ in models:
            headers += [f"err {name}", f"top-1 {name}"]
        print_table(headers, rows)


if __name__ == "__main__":
    main()
