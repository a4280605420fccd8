"""Self-speculative decoding (``lamina.generate``) against lamina's own full greedy decode and eager decoding.

Usage: ``python benchmarks/speculative.py [--model chargpt|llama] [--corpus docs|code] [--steps 3000]
[--new-tokens 128] [--repeats 3] [--lookahead 4] [--exit-weight 1.0] [--prompts 6]``

Two character-level models (8 layers, d_model 128; text: Python's reference documentation, English prose,
or the standard library's source) are trained here, one plainly and one with
``lamina.skip.LayerDropRegularizer`` (cached under ``~/.cache/lamina/bench``):
lamina's ``CharGPT`` (default; caches preallocated and written in place, ``StaticDecode``) or a transformers
Llama (``DynamicCache``). For each, batch-1 greedy continuation of held-out prompts: eager decoding (CharGPT's
``greedy``, or ``model.generate``), lamina's full decode (its prefill and decode modules, the same cache kind
as the speculative decoder's), and self-speculative decoding with the draft schedules of ``--drafts``;
tokens/s (medians of interleaved rounds), the draft acceptance rate and whether the tokens equal eager greedy
decoding. Before the table, per model, how often each block's early exit agrees with the full model's next
token on held-out text (``exit_agreement``): what bounds the acceptance of a draft exiting there; and how
much of the greedy continuations is runs of spaces (where every draft agrees: greedy decoding of a small
character model on code falls into them after a newline).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Callable  # noqa: E402

from common import machine, print_table  # noqa: E402
from decode import lamina_loop  # noqa: E402

CACHE = Path.home() / ".cache" / "lamina" / "bench"


def make_model(kind: str = "llama") -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lamina.models.char_gpt import CharGPT
    from lamina.models.char_training import VOCAB

    torch.manual_seed(0)
    if kind == "chargpt":
        return CharGPT(VOCAB, d_model=128, n_heads=4, n_layers=8, max_len=512)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(config)


def blocks_and_head(model: torch.nn.Module) -> tuple[torch.nn.ModuleList, Callable]:
    """The residual blocks and the early-exit head (final norm and LM head) of either model kind."""
    if hasattr(model, "h"):
        return model.h, model.head
    return model.model.layers, lambda h: model.lm_head(model.model.norm(h))


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def trained(data: torch.Tensor, steps: int, regularized: bool, kind: str = "llama",
            exit_weight: float = 1.0, corpus: str = "code") -> torch.nn.Module:
    """The model after ``steps`` of AdamW on next-character prediction (cached by its settings)."""
    from lamina.skip import LayerDropRegularizer

    tag = f"_layerdrop_e{exit_weight:g}" if regularized else ""
    path = CACHE / f"spec_{kind}_l8_d128_s{steps}{tag}{'' if corpus == 'code' else '_' + corpus}.pt"
    model = make_model(kind)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    # CharGPT's positions are learned: its windows cover every position a benchmark generation reaches
    batch, seq = (4, 256) if kind == "chargpt" else (16, 64)
    blocks, head = blocks_and_head(model)
    reg = LayerDropRegularizer(blocks, head, max_drop=0.2 if regularized else 0.0,
                               exit_weight=exit_weight if regularized else 0.0)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.perf_counter()
    with reg:
        for step in range(steps):
            at = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
            x = torch.stack([data[i: i + seq] for i in at])
            y = torch.stack([data[i + 1: i + seq + 1] for i in at])
            loss = F.cross_entropy(logits_of(model, x).flatten(0, 1), y.flatten())
            total = loss + reg.loss(y) if regularized else loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % 100 == 0:
                print(f"  step {step} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def eager_generate(model: torch.nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """transformers' greedy ``generate``; the attention mask given, since the space character is token 0 (the
    pad token), which ``generate`` would otherwise mask out of the prompt."""
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False)


@torch.no_grad()
def perplexity(model: torch.nn.Module, data: torch.Tensor, seq: int = 128) -> float:
    n = (len(data) - 1) // seq
    x = data[: n * seq].reshape(n, seq)
    y = data[1: n * seq + 1].reshape(n, seq)
    return float(torch.exp(F.cross_entropy(logits_of(model, x).flatten(0, 1), y.flatten())))


@torch.no_grad()
def exit_agreement(model: torch.nn.Module, data: torch.Tensor, seq: int = 128) -> list[float]:
    """Per block l, how often the early exit after block l (final norm and LM head on its hidden state)
    picks the full model's next token, teacher-forced over ``data``: the most a draft exiting there can
    be accepted per token."""
    n = (len(data) - 1) // seq
    x = data[: n * seq].reshape(n, seq)
    blocks, head = blocks_and_head(model)
    states: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, a, out: states.append(out[0] if isinstance(out, tuple) else out))
             for b in blocks]
    try:
        full = logits_of(model, x).argmax(-1)
    finally:
        for h in hooks:
            h.remove()
    return [float((head(h).argmax(-1) == full).float().mean()) for h in states[:-1]]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def decode(tokens: torch.Tensor) -> str:
    """Characters of token ids (``char_training.encode``'s inverse)."""
    return "".join("\n" if c == 95 else chr(c + 32) for c in tokens.tolist())


def eager_char_gpt(model: torch.nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """CharGPT's eager greedy decoding (its prefill, then one token at a time, the cache concatenated)."""
    from lamina.models.char_gpt import Decode, Prefill, greedy

    return lambda ids, new: torch.cat([ids, greedy(Prefill(model), Decode(model), ids, new)], 1)


def lamina_char_gpt(model: torch.nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """CharGPT's greedy decoding with lamina's prefill and ``StaticDecode`` modules: the caches preallocated
    and written in place, as the speculative decoder's (one module for every cache capacity)."""
    import lamina
    from torch.export import Dim

    from lamina.models.char_gpt import Prefill, StaticDecode, greedy_static, static_caches

    modules: dict[str, object] = {}

    def run(ids: torch.Tensor, new: int) -> torch.Tensor:
        capacity = -(-(ids.shape[1] + new + 1) // 64) * 64
        if not modules:
            modules["prefill"] = lamina.compile(Prefill(model), (ids,), dynamic_shapes=({1: Dim("tokens")},),
                                                fallback=False)
            _, keys, values = modules["prefill"](ids)
            caches = static_caches(keys, values, capacity)
            modules["decode"] = lamina.compile(StaticDecode(model), (ids[:, -1:], torch.tensor([ids.shape[1]]),
                                                                     *caches),
                                               dynamic_shapes=(None, None, ({2: Dim("capacity")},) * len(caches)),
                                               fallback=False)
        return torch.cat([ids, greedy_static(modules["prefill"], modules["decode"], ids, new, capacity)], 1)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lookahead", type=int, default=4)
    parser.add_argument("--model", choices=("chargpt", "llama"), default="chargpt")
    parser.add_argument("--corpus", choices=("code", "docs"), default="docs",
                        help="the standard library's source, or Python's reference documentation (English prose)")
    parser.add_argument("--prompts", type=int, default=6, help="held-out prompts of 48 characters")
    parser.add_argument("--exit-weight", type=float, default=1.0,
                        help="LayerDropRegularizer's early-exit loss weight for the regularized model")
    parser.add_argument("--drafts", default="skip{policy=exit,speedup=2};skip{policy=exit,speedup=3};skip{speedup=1.5}",
                        help="draft schedules, separated by ';'")
    ns = parser.parse_args()
    import lamina
    from lamina.models.char_training import docs_corpus, encode, stdlib_corpus

    torch.set_num_threads(2)
    text = stdlib_corpus if ns.corpus == "code" else docs_corpus
    data = encode(text(400_000))
    held_out = encode(text(32_000, skip=400_000))
    print(f"machine: {machine()}; {ns.model} on {ns.corpus}, lookahead {ns.lookahead}, {ns.new_tokens} new tokens, LayerDrop "
          f"exit weight {ns.exit_weight:g}")
    prompts = [held_out[i * 997: i * 997 + 48].reshape(1, -1) for i in range(ns.prompts)]
    rows = []
    for regularized in (False, True):
        name = "LayerDrop" if regularized else "plain"
        model = trained(data, ns.steps, regularized, ns.model, ns.exit_weight, ns.corpus)
        agreement = exit_agreement(model, held_out)
        print(f"{name}: early exit after block l agrees with the full model's next token (held out): "
              + " ".join(f"{l + 1}:{a:.0%}" for l, a in enumerate(agreement)), flush=True)
        if ns.model == "chargpt":
            contenders = {"eager greedy": eager_char_gpt(model), "lamina full": lamina_char_gpt(model)}
        else:
            contenders = {"eager generate": None, "lamina full": lamina_loop(model)}
        reference = contenders["eager greedy"] if ns.model == "chargpt" else None
        for draft in ns.drafts.split(";"):
            contenders[f"lamina speculative, {draft}"] = lamina.SpeculativeDecoder(model, draft,
                                                                                  lookahead=ns.lookahead)
        want = {}
        with torch.no_grad():
            for i, p in enumerate(prompts):
                want[i] = reference(p, ns.new_tokens) if reference else eager_generate(model, p, ns.new_tokens)
        runs = [decode(w[0, p.shape[1]:]) for w, p in zip(want.values(), prompts)]
        spaces_of = [sum(len(m.group()) for m in re.finditer(" {8,}", r)) / len(r) for r in runs]
        spaces = sum(spaces_of) / len(spaces_of)
        print(f"{name}: {spaces:.0%} of the greedy continuations' characters are in runs of 8+ spaces; the first: "
              + " | ".join(repr(r[:40]) for r in runs[:3]), flush=True)
        times: dict[str, list[float]] = {c: [] for c in contenders}
        per_prompt: dict[tuple[str, int], list[float]] = {(c, i): [] for c in contenders for i in range(len(prompts))}
        same: dict[str, bool] = {c: True for c in contenders}
        accept: dict[str, list[float]] = {c: [] for c in contenders}
        accept_of: dict[tuple[str, int], float] = {}
        for rnd in range(ns.repeats + 1):  # round 0 warms (compiles)
            for c, run in contenders.items():
                for i, p in enumerate(prompts):
                    start = time.perf_counter()
                    with torch.inference_mode():
                        if run is None:
                            got = eager_generate(model, p, ns.new_tokens)
                        elif isinstance(run, lamina.SpeculativeDecoder):
                            result = run.generate(p, ns.new_tokens)
                            got = result.tokens
                            accept[c].append(result.acceptance)
                            accept_of[c, i] = result.acceptance
                        else:
                            got = run(p, ns.new_tokens)
                    if rnd:
                        times[c].append(ns.new_tokens / (time.perf_counter() - start))
                        per_prompt[c, i].append(times[c][-1])
                    same[c] = same[c] and torch.equal(got, want[i])
        base = sorted(times["lamina full"])[len(times["lamina full"]) // 2]
        for c in contenders:
            if c.startswith("lamina speculative"):
                ratios = [median(per_prompt[c, i]) / median(per_prompt["lamina full", i]) for i in range(len(prompts))]
                print(f"{name}, {c[len('lamina speculative, '):]}, per prompt (vs lamina full, accepted, share of "
                      "the continuation in space runs): " + "  ".join(
                          f"{r:.2f}x {accept_of[c, i]:.0%} ({spaces_of[i]:.0%})" for i, r in enumerate(ratios)))
        for c in contenders:
            tps = sorted(times[c])[len(times[c]) // 2]
            acc = f"{sum(accept[c]) / len(accept[c]):.0%}" if accept[c] else ""
            rows.append((name, f"{perplexity(model, held_out):.3f}", c, f"{tps:.0f}", f"{tps / base:.2f}x", acc,
                         "yes" if same[c] else "NO"))
    print_table(["model", "held-out ppl", "decoder", "tokens/s", "vs lamina full", "accepted", "= eager greedy"],
                rows)


if __name__ == "__main__":
    main()
