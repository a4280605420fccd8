"""Self-speculative decoding (``lamina.generate``) against lamina's own full greedy decode and eager ``generate``.

Usage: ``python benchmarks/speculative.py [--steps 600] [--new-tokens 128] [--repeats 3] [--lookahead 4]``

Two character-level transformers Llamas (8 layers, d_model 128, the standard library's source as text) are
trained here, one plainly and one with ``lamina.skip.LayerDropRegularizer`` (cached under
``~/.cache/lamina/bench``). For each, batch-1 greedy continuation of held-out prompts: eager
``model.generate``, lamina's full decode (prefill and decode modules of ``lamina.compile``), and
self-speculative decoding with the draft schedules of ``--drafts`` (early exit and unified); tokens/s (medians of interleaved
rounds), the draft acceptance rate and whether the tokens equal eager greedy decoding. Before the table,
per model, how often each block's early exit agrees with the full model's next token on held-out text
(``exit_agreement``): what bounds the acceptance of a draft exiting there.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, print_table  # noqa: E402
from decode import lamina_loop  # noqa: E402

CACHE = Path.home() / ".cache" / "lamina" / "bench"


def make_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    from lamina.models.char_training import VOCAB

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=0, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(config)


def trained(data: torch.Tensor, steps: int, regularized: bool) -> torch.nn.Module:
    """The model after ``steps`` of AdamW on next-character prediction (cached by its settings)."""
    from lamina.skip import LayerDropRegularizer

    path = CACHE / f"spec_llama_l8_d128_s{steps}{'_layerdrop' if regularized else ''}.pt"
    model = make_model()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    reg = LayerDropRegularizer(model.model.layers, lambda h: model.lm_head(model.model.norm(h)),
                               max_drop=0.2 if regularized else 0.0, exit_weight=0.2 if regularized else 0.0)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.perf_counter()
    with reg:
        for step in range(steps):
            at = torch.randint(0, len(data) - 65, (16,), generator=gen)
            x = torch.stack([data[i: i + 64] for i in at])
            y = torch.stack([data[i + 1: i + 65] for i in at])
            loss = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
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
    return float(torch.exp(F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())))


@torch.no_grad()
def exit_agreement(model: torch.nn.Module, data: torch.Tensor, seq: int = 128) -> list[float]:
    """Per block l, how often the early exit after block l (final norm and LM head on its hidden state)
    picks the full model's next token, teacher-forced over ``data``: the most a draft exiting there can
    be accepted per token."""
    n = (len(data) - 1) // seq
    out = model(data[: n * seq].reshape(n, seq), output_hidden_states=True)
    full = out.logits.argmax(-1)
    head = lambda h: model.lm_head(model.model.norm(h))  # noqa: E731
    return [float((head(h).argmax(-1) == full).float().mean()) for h in out.hidden_states[1:-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lookahead", type=int, default=4)
    parser.add_argument("--drafts", default="skip{policy=exit,speedup=2};skip{policy=exit,speedup=3};skip{speedup=1.5}",
                        help="draft schedules, separated by ';'")
    ns = parser.parse_args()
    import lamina
    from lamina.models.char_training import encode, stdlib_corpus

    torch.set_num_threads(2)
    data = encode(stdlib_corpus(400_000))
    held_out = encode(stdlib_corpus(32_000, skip=400_000))
    print(f"machine: {machine()}; lookahead {ns.lookahead}, {ns.new_tokens} new tokens")
    prompts = [held_out[i * 997: i * 997 + 48].reshape(1, -1) for i in range(3)]
    rows = []
    for regularized in (False, True):
        name = "LayerDrop" if regularized else "plain"
        model = trained(data, ns.steps, regularized)
        agreement = exit_agreement(model, held_out)
        print(f"{name}: early exit after block l agrees with the full model's next token (held out): "
              + " ".join(f"{l + 1}:{a:.0%}" for l, a in enumerate(agreement)), flush=True)
        contenders = {"eager generate": None, "lamina full": lamina_loop(model)}
        for draft in ns.drafts.split(";"):
            contenders[f"lamina speculative, {draft}"] = lamina.SpeculativeDecoder(model, draft,
                                                                                  lookahead=ns.lookahead)
        want = {}
        with torch.no_grad():
            for i, p in enumerate(prompts):
                want[i] = eager_generate(model, p, ns.new_tokens)
        times: dict[str, list[float]] = {c: [] for c in contenders}
        same: dict[str, bool] = {c: True for c in contenders}
        accept: dict[str, list[float]] = {c: [] for c in contenders}
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
                        else:
                            got = run(p, ns.new_tokens)
                    if rnd:
                        times[c].append(ns.new_tokens / (time.perf_counter() - start))
                    same[c] = same[c] and torch.equal(got, want[i])
        base = sorted(times["lamina full"])[len(times["lamina full"]) // 2]
        for c in contenders:
            tps = sorted(times[c])[len(times[c]) // 2]
            acc = f"{sum(accept[c]) / len(accept[c]):.0%}" if accept[c] else ""
            rows.append((name, f"{perplexity(model, held_out):.3f}", c, f"{tps:.0f}", f"{tps / base:.2f}x", acc,
                         "yes" if same[c] else "NO"))
    print_table(["model", "held-out ppl", "decoder", "tokens/s", "vs lamina full", "accepted", "= eager greedy"],
                rows)


if __name__ == "__main__":
    main()
