"""Greedy decoding of transformers Llama models: eager vs inductor vs lamina, ms per token and memory.

    python benchmarks/decode.py [--models tiny medium large] [--batch 1 8] [--new-tokens 256]
                                [--prompt 32] [--caches dynamic static] [--contenders ...] [--repeats 3]
                                [--dtype float32|bfloat16|float16]

Per model (random weights, no downloads), batch and cache kind, each contender decodes the same
prompt greedily, in ``repeats`` rounds (interleaved, but each dynamo contender's back to back:
see ``schedule``); the table gives the median round's decode ms
per token (a step, for the whole batch: the time for ``new_tokens`` tokens minus the time for one,
over ``new_tokens - 1``: the prefill left out), the weights streamed per step (all but the input
embedding table) as GB/s against the machine's measured copy bandwidth, peak and final resident
memory above the level before the run, and whether the tokens equal eager's. Contenders:

- ``eager``: ``model.generate``;
- ``inductor``: ``generate`` with ``model.forward`` under ``torch.compile`` (inductor);
- ``lamina``: the same with ``torch.compile(backend=LaminaBackend())``;
- ``lamina.compile``: lamina's own entry point driven by a greedy loop: with the dynamic cache a
  prefill module and one decode module compiled with ``dynamic_shapes="auto"``; with the static
  cache (``StaticCache``, written in place) a prefill and a decode module of fixed shapes;
- ``llama.cpp``: llama-cpp-python on an F32 GGUF of the same weights (batch 1, its own preallocated
  cache, listed under the dynamic rows), the external anchor when ``llama-cpp-python`` and ``gguf``
  are installed; otherwise its row is skipped with a message.

The timing of a model with a static cache includes building the cache (transformers' generate does too).
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
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
CONTENDERS = ("eager", "inductor", "lamina", "lamina.compile", "llama.cpp")


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


def static_cache(model: torch.nn.Module, batch: int, capacity: int) -> object:
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=capacity, max_batch_size=batch)


def hf_generate(model: torch.nn.Module, forward: Callable, cache: str,
                capacity: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``generate``; with the static cache, one of ``capacity`` positions made per run, so every run (the
    warm-up, the one-token and the long one) has the same shapes."""
    def run(ids: torch.Tensor, new: int) -> torch.Tensor:
        saved, model.forward = model.forward, forward
        try:
            extra = {"past_key_values": static_cache(model, ids.shape[0], capacity)} if cache == "static" else {}
            return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **extra)
        finally:
            model.forward = saved

    return run


def lamina_loop(model: torch.nn.Module, pipeline: str | None = None,
                calibration: object = None) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Greedy decoding with lamina.compile's modules: one prefill, one decode module for all lengths
    (``pipeline``: lamina's passes, None for the default; ``calibration`` for those that read it)."""
    import lamina

    modules: dict[str, object] = {}

    def run(ids: torch.Tensor, new: int) -> torch.Tensor:
        if "prefill" not in modules:
            modules["prefill"] = lamina.compile(model, (ids,), pipeline=pipeline, calibration=calibration,
                                                fallback=False)
        out = modules["prefill"](ids)
        token = out.logits[:, -1:].argmax(-1)
        tokens, cache = [token], out.past_key_values
        if "decode" not in modules:
            modules["decode"] = lamina.compile(model, (token,), example_kwargs={"past_key_values": cache},
                                               pipeline=pipeline, calibration=calibration, dynamic_shapes="auto",
                                               fallback=False)
        for _ in range(new - 1):
            out = modules["decode"](tokens[-1], past_key_values=cache)
            cache = out.past_key_values
            tokens.append(out.logits[:, -1:].argmax(-1))
        return torch.cat([ids, *tokens], 1)

    return run


def lamina_static_loop(model: torch.nn.Module, capacity: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Greedy decoding with lamina.compile's modules and transformers' StaticCache: a prefill module and
    one decode module (the same shapes every step), the cache written in place."""
    import lamina

    modules: dict[str, object] = {}

    def run(ids: torch.Tensor, new: int) -> torch.Tensor:
        t = ids.shape[1]
        cache = static_cache(model, ids.shape[0], capacity)
        if "prefill" not in modules:
            modules["prefill"] = lamina.compile(model, (ids,), fallback=False, example_kwargs={
                "past_key_values": cache, "cache_position": torch.arange(t)})
        out = modules["prefill"](ids, past_key_values=cache, cache_position=torch.arange(t))
        cache = out.past_key_values  # transformers allocates a StaticCache's tensors in the first forward
        tokens = [out.logits[:, -1:].argmax(-1)]
        if "decode" not in modules:
            modules["decode"] = lamina.compile(model, (tokens[-1],), fallback=False, example_kwargs={
                "past_key_values": cache, "cache_position": torch.tensor([t])})
        for i in range(new - 1):
            out = modules["decode"](tokens[-1], past_key_values=cache, cache_position=torch.tensor([t + i]))
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


def contender(name: str, model: torch.nn.Module, cache: str,
              capacity: int) -> Callable[[torch.Tensor, int], torch.Tensor] | str:
    """The generate function of ``name``, or why it does not apply; ``capacity``: static cache positions."""
    from lamina.dynamo import LaminaBackend

    if name == "eager":
        return hf_generate(model, model.forward, cache, capacity)
    if name == "inductor":
        torch._dynamo.reset()
        return hf_generate(model, torch.compile(model.forward, backend="inductor"), cache, capacity)
    if name == "lamina":
        torch._dynamo.reset()
        return hf_generate(model, torch.compile(model.forward, backend=LaminaBackend()), cache, capacity)
    if name == "llama.cpp":
        if cache != "dynamic":
            return "llama.cpp runs once per model and batch, with its own preallocated cache"
        missing = llama_cpp_missing()
        return missing if missing is not None else llama_cpp_generate(model, Path(tempfile.mkdtemp()))
    return lamina_static_loop(model, capacity) if cache == "static" else lamina_loop(model)


def llama_cpp_missing() -> str | None:
    """Why the llama.cpp row is skipped, or None when it runs."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama.cpp row skipped: pip install llama-cpp-python gguf (it builds from source, ~10 minutes)"
    return None


def write_gguf(model: torch.nn.Module, path: Path) -> None:
    """The HF Llama's own weights as an F32 GGUF llama.cpp loads (q/k rows permuted to its rope layout,
    as llama.cpp's converter does), so both decode the same model."""
    import gguf

    c = model.config
    heads, kv, hidden = c.num_attention_heads, c.num_key_value_heads, c.hidden_size

    def permute(w: torch.Tensor, n: int) -> torch.Tensor:
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(hidden)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_rope_dimension_count(hidden // heads)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("none")  # token ids in, no text
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"],
               "output.weight": sd["lm_head.weight"]}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors.update({
            f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blk.{i}.attn_q.weight": permute(sd[p + "self_attn.q_proj.weight"], heads),
            f"blk.{i}.attn_k.weight": permute(sd[p + "self_attn.k_proj.weight"], kv),
            f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
            f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"]})
    for name, t in tensors.items():
        w.add_tensor(name, t.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_cpp_generate(model: torch.nn.Module, directory: Path) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Greedy decoding by llama.cpp (2 threads, F32) of the same weights; batch 1."""
    import llama_cpp

    path = directory / "model-f32.gguf"
    write_gguf(model, path)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.max_position_embeddings, n_threads=2,
                          n_threads_batch=2, n_batch=512, type_k=0, type_v=0, logits_all=True,
                          verbose=False)  # an F32 KV cache; logits_all: without it, scores stay empty

    def run(ids: torch.Tensor, new: int) -> torch.Tensor:
        if ids.shape[0] != 1:
            raise ValueError("the llama.cpp row decodes batch 1")
        llm.reset()
        tokens = ids[0].tolist()
        llm.eval(tokens)
        out = []
        for _ in range(new):
            token = int(llm.scores[llm.n_tokens - 1].argmax())
            out.append(token)
            if len(out) < new:
                llm.eval([token])
        return torch.cat([ids, torch.tensor([out])], 1)

    return run


DYNAMO = ("inductor", "lamina")


def schedule(names: list[str], repeats: int) -> list[tuple[str, int]]:
    """(contender, rounds) in run order: the others interleaved round by round, each dynamo contender's
    rounds back to back (both compile ``model.forward``'s frame: dynamo's cache of one would mark the
    other's sizes dynamic)."""
    others = [n for n in names if n not in DYNAMO]
    order: list[tuple[str, int]] = []
    for r in range(repeats):
        order += [(n, 1) for n in others]
        if r < len([n for n in names if n in DYNAMO]):
            order.append(([n for n in names if n in DYNAMO][r], repeats))
    order += [(n, repeats) for n in [n for n in names if n in DYNAMO][repeats:]]
    return order


def agreement(tokens: torch.Tensor, eager: torch.Tensor, prompt: int) -> str:
    """'yes' when the new tokens equal eager's, else how many leading ones do (per row, the fewest)."""
    if torch.equal(tokens, eager):
        return "yes"
    if tokens.shape != eager.shape:
        return "NO (length)"
    same = (tokens[:, prompt:] == eager[:, prompt:]).int().cumprod(1).sum(1).min()
    return f"NO: first {int(same)} of {tokens.shape[1] - prompt}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", choices=tuple(SIZES), default=list(SIZES))
    parser.add_argument("--batch", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--caches", nargs="*", choices=("dynamic", "static"), default=["dynamic", "static"])
    parser.add_argument("--contenders", nargs="*", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the table gives medians")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="the model's weights and activations (llama.cpp's row stays F32)")
    ns = parser.parse_args()
    bandwidth = copy_bandwidth_gbs()
    print(f"machine: {machine()}; copy bandwidth {bandwidth:.1f} GB/s; prompt {ns.prompt}, {ns.new_tokens} new tokens; "
          f"{ns.dtype}")
    print(llama_cpp_missing() or "llama.cpp: llama-cpp-python, F32 GGUF of the same weights, 2 threads, batch 1")
    rows = []
    for size in ns.models:
        model = make_llama(size).to(getattr(torch, ns.dtype))
        weight_gb = streamed_gb(model)
        for batch in ns.batch:
            ids = torch.randint(1, 32000, (batch, ns.prompt))
            for cache in ns.caches:
                runs = {}
                for name in ns.contenders:
                    run = contender(name, model, cache, ns.prompt + ns.new_tokens)
                    if isinstance(run, str):
                        continue
                    if name == "llama.cpp" and batch != 1:
                        rows.append([size, batch, cache, name, "llama.cpp row: batch 1 only"] + [""] * 5)
                        continue
                    runs[name] = run
                measured: dict[str, list[Row]] = {name: [] for name in runs}
                failed: dict[str, str] = {}
                for name, rounds in schedule(list(runs), ns.repeats):
                    if name in DYNAMO:  # a fresh frame cache: what one backend compiled is not the other's
                        torch._dynamo.reset()
                    for _ in range(rounds):
                        if name in failed:
                            break
                        with torch.no_grad():
                            try:
                                measured[name].append(measure(runs[name], ids, ns.new_tokens))
                            except Exception as e:  # noqa: BLE001 - a contender that fails is a row, not a crash
                                failed[name] = f"failed: {type(e).__name__}: {str(e)[:60]}"
                eager_tokens = measured["eager"][0].tokens if measured.get("eager") else None
                for name in runs:
                    if name in failed:
                        rows.append([size, batch, cache, name, failed[name]] + [""] * 5)
                        continue
                    r = sorted(measured[name], key=lambda x: x.ms_per_token)[len(measured[name]) // 2]  # median
                    same = "-" if eager_tokens is None else agreement(r.tokens, eager_tokens, ns.prompt)
                    gbs = weight_gb / (r.ms_per_token / 1e3)  # a step streams the weights once, any batch
                    rows.append([size, batch, cache, name, f"{r.ms_per_token:.2f}", f"{gbs:.1f}",
                                 f"{gbs / bandwidth:.0%}", f"{r.peak_mb:.0f}", f"{r.final_mb:.0f}", same])
                del runs
                gc.collect()
        del model
        gc.collect()
    print_table(["model", "batch", "cache", "contender", "ms/token", "weights GB/s", "of copy bw", "peak +MB",
                 "final +MB", "tokens = eager"], rows)


if __name__ == "__main__":
    main()
