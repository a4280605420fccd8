"""Greedy decoding of transformers Llama models: eager vs inductor vs lamina, ms per token and memory.

    python benchmarks/decode.py [--models tiny medium large] [--batch 1 8] [--new-tokens 256]
                                [--prompt 32] [--caches dynamic static] [--contenders ...]

Per model (random weights, no downloads), batch and cache kind, each contender decodes the same
prompt greedily; the table gives decode ms per token (the time for ``new_tokens`` tokens minus the
time for one, over ``new_tokens - 1``: the prefill left out), the weights streamed per token (all
but the input embedding table) as GB/s against the machine's measured copy bandwidth, peak and final resident memory above the
level before the run, and whether the tokens equal eager's. Contenders:

- ``eager``: ``model.generate``;
- ``inductor``: ``generate`` with ``model.forward`` under ``torch.compile`` (inductor);
- ``lamina``: the same with ``torch.compile(backend=LaminaBackend())``;
- ``lamina.compile``: lamina's own entry point, a prefill module and one decode module compiled with
  ``dynamic_shapes="auto"``, driven by a greedy loop (dynamic cache only).

llama.cpp (F32 GGUF of the same shapes) is the external anchor when ``llama-cpp-python`` and ``gguf``
are installed; otherwise its row is skipped with a message.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import _status, machine, print_table  # noqa: E402

SIZES = {  # hidden, ffn, layers, heads, kv heads
    "tiny": (64, 128, 2, 4, 2),
    "medium": (1024, 2816, 4, 16, 8),
    "large": (2048, 5632, 4, 32, 8),
}
CONTENDERS = ("eager", "inductor", "lamina", "lamina.compile")


@dataclass(frozen=True)
class Row:
    ms_per_token: float
    peak_mb: float
    final_mb: float
    tokens: torch.Tensor


def make_llama(size: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, ffn, layers, heads, kv = SIZES[size]
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=32000,
                         max_position_embeddings=1024, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def streamed_gb(model: torch.nn.Module) -> float:
    """GB of weights a decode step reads: all but the input embedding table, of which it reads one row."""
    table = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not table) / 1e9


def copy_bandwidth_gbs() -> float:
    """GB/s of a large tensor copy (read + write counted once each), the bound for streaming weights."""
    a = torch.empty(256 << 20, dtype=torch.uint8)
    b = torch.empty_like(a)
    b.copy_(a)
    start = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    return 2 * 5 * a.numel() / (time.perf_counter() - start) / 1e9


def hf_generate(model: torch.nn.Module, forward: Callable, cache: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def run(ids: torch.Tensor, new: int) -> torch.Tensor:
        saved, model.forward = model.forward, forward
        try:
            extra = {"cache_implementation": "static"} if cache == "static" else {}
            return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **extra)
        finally:
            model.forward = saved

    return run


def lamina_loop(model: torch.nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Greedy decoding with lamina.compile's modules: one prefill, one decode module for all lengths."""
    import lamina

    modules: dict[str, object] = {}

    def run(ids: torch.Tensor, new: int) -> torch.Tensor:
        if "prefill" not in modules:
            modules["prefill"] = lamina.compile(model, (ids,), fallback=False)
        out = modules["prefill"](ids)
        token = out.logits[:, -1:].argmax(-1)
        tokens, cache = [token], out.past_key_values
        if "decode" not in modules:
            modules["decode"] = lamina.compile(model, (token,), example_kwargs={"past_key_values": cache},
                                               dynamic_shapes="auto", fallback=False)
        for _ in range(new - 1):
            out = modules["decode"](tokens[-1], past_key_values=cache)
            cache = out.past_key_values
            tokens.append(out.logits[:, -1:].argmax(-1))
        return torch.cat([ids, *tokens], 1)

    return run


def measure(run: Callable[[torch.Tensor, int], torch.Tensor], ids: torch.Tensor, new: int) -> Row:
    """Warm (compiles), then time ``new`` tokens and one token; resident memory around the long run."""
    run(ids, 4)
    gc.collect()
    start = time.perf_counter()
    run(ids, 1)
    one = time.perf_counter() - start
    base = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak
    except OSError:
        pass
    start = time.perf_counter()
    tokens = run(ids, new)
    total = time.perf_counter() - start
    peak, final = _status("VmHWM") - base, _status("VmRSS") - base
    return Row((total - one) / max(new - 1, 1) * 1e3, peak / 2**20, final / 2**20, tokens)


def contender(name: str, model: torch.nn.Module, cache: str) -> Callable[[torch.Tensor, int], torch.Tensor] | str:
    """The generate function of ``name``, or why it does not apply."""
    from lamina.dynamo import LaminaBackend

    if name == "eager":
        return hf_generate(model, model.forward, cache)
    if name == "inductor":
        torch._dynamo.reset()
        return hf_generate(model, torch.compile(model.forward, backend="inductor"), cache)
    if name == "lamina":
        torch._dynamo.reset()
        return hf_generate(model, torch.compile(model.forward, backend=LaminaBackend()), cache)
    if cache == "static":
        return "lamina.compile drives its own loop with the dynamic cache"
    return lamina_loop(model)


def llama_cpp_note() -> str:
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama.cpp row skipped: pip install llama-cpp-python gguf (it builds from source, ~10 minutes)"
    return "llama.cpp row: not run by this version of the script"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", choices=tuple(SIZES), default=list(SIZES))
    parser.add_argument("--batch", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--caches", nargs="*", choices=("dynamic", "static"), default=["dynamic", "static"])
    parser.add_argument("--contenders", nargs="*", choices=CONTENDERS, default=list(CONTENDERS))
    ns = parser.parse_args()
    bandwidth = copy_bandwidth_gbs()
    print(f"machine: {machine()}; copy bandwidth {bandwidth:.1f} GB/s; prompt {ns.prompt}, {ns.new_tokens} new tokens")
    print(llama_cpp_note())
    rows = []
    for size in ns.models:
        model = make_llama(size)
        weight_gb = streamed_gb(model)
        for batch in ns.batch:
            ids = torch.randint(1, 32000, (batch, ns.prompt))
            for cache in ns.caches:
                eager_tokens = None
                for name in ns.contenders:
                    run = contender(name, model, cache)
                    if isinstance(run, str):
                        continue
                    with torch.no_grad():
                        try:
                            r = measure(run, ids, ns.new_tokens)
                        except Exception as e:  # noqa: BLE001 - a contender that fails is a row, not a crash
                            rows.append([size, batch, cache, name, f"failed: {type(e).__name__}: {str(e)[:60]}"]
                                        + [""] * 5)
                            continue
                    if name == "eager":
                        eager_tokens = r.tokens
                    same = "-" if eager_tokens is None else "yes" if torch.equal(r.tokens, eager_tokens) else "NO"
                    gbs = weight_gb / (r.ms_per_token / 1e3)
                    rows.append([size, batch, cache, name, f"{r.ms_per_token:.2f}", f"{gbs:.1f}",
                                 f"{gbs / bandwidth:.0%}", f"{r.peak_mb:.0f}", f"{r.final_mb:.0f}", same])
        del model
        gc.collect()
    print_table(["model", "batch", "cache", "contender", "ms/token", "weights GB/s", "of copy bw", "peak +MB",
                 "final +MB", "tokens = eager"], rows)


if __name__ == "__main__":
    main()
