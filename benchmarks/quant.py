"""Quantized batch-1 decoding of a transformers Llama: eager fp32, torch's int8 weight-only kernel, lamina
fp32 / int8 / int4, ms per token, weight bytes streamed and GB/s against a measured copy bandwidth.

Usage: ``python benchmarks/quant.py [--model large] [--new-tokens 64] [--repeats 3]``

Every contender decodes the same prompt greedily with transformers' dynamic cache, one token per step
(lamina: ``lamina.compile``'s prefill and decode modules, the pipeline ``quantize{...},fuse`` for the
quantized rows). Rounds are interleaved and the table gives medians. "torch int8" replaces each
``nn.Linear`` but the LM head by ``torch._weight_int8pack_mm`` over per-channel int8 weights (torch's
CPU kernel for weight-only int8), "torch int4" by ``torch._weight_int4pack_mm_for_cpu`` over lamina's int4 g32
weights, "torchao int8" is torchao's ``Int8WeightOnlyConfig`` under inductor (where torchao is installed:
``pip install --no-deps torchao``; its int4 CPU layouts need bfloat16 or extra packages); "same tokens" compares with
eager fp32 (quantized rows may differ: they compute with other weights). "head too" rows quantize the
LM head as well (``keep=none``); by default it stays float32 and, with a 32000-token vocabulary, is
most of what an int4 step reads. "mixed" gives each layer 4 or 8 bits (or float) under an average of
5 bits per weight, from ``lamina.calibrate`` on four batches of 4 x 64 random tokens. "W8A8" also quantizes each layer's input per token (``act=int8``):
integer dot products when decoding (AVX-512 VNNI), ``torch._int_mm`` (integer GEMM) for 8-bit
per-channel prefill; "W4A8" the same with 4-bit weights. The prefill rows time one forward of 4 x 128
tokens. ``--only a,b`` keeps the contenders whose names contain one of the strings (lamina fp32 always).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, print_table  # noqa: E402
from decode import SIZES, copy_bandwidth_gbs, lamina_loop, make_llama  # noqa: E402

PIPELINES = {
    "lamina fp32": "canonicalize,fuse",
    "lamina int8": "canonicalize,quantize{bits=8},fuse",
    "lamina int4 g32": "canonicalize,quantize{bits=4,group=32},fuse",
    "lamina int8, head too": "canonicalize,quantize{bits=8,keep=none},fuse",
    "lamina int4 g32, head too": "canonicalize,quantize{bits=4,group=32,keep=none},fuse",
    "lamina int8 W8A8": "canonicalize,quantize{bits=8,act=int8},fuse",
    "lamina int4 g32 W4A8": "canonicalize,quantize{bits=4,group=32,act=int8},fuse",
    "lamina int8 W8A8, head too": "canonicalize,quantize{bits=8,act=int8,keep=none},fuse",
    "lamina int4 g32 W4A8, head too": "canonicalize,quantize{bits=4,group=32,act=int8,keep=none},fuse",
    "lamina mixed, budget 5": "canonicalize,quantize{budget=5.0},fuse",
}
PREFILL = ("lamina fp32", "lamina int8", "lamina int4 g32", "lamina int8 W8A8", "lamina int4 g32 W4A8")


class Int8Linear(nn.Module):
    """A bias-free linear layer through ``torch._weight_int8pack_mm`` (per-channel symmetric int8)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(1) / 127
        self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return torch._weight_int8pack_mm(rows, self.q, self.scale).reshape(*x.shape[:-1], -1)


class Int4Linear(nn.Module):
    """A bias-free linear layer through ``torch._weight_int4pack_mm_for_cpu`` (torch's CPU kernel for weight-only
    int4, groups of 32), on the weights lamina's ``bits=4,group=32`` stores: ``(v - 8) * scale``, zero 0."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        from lamina.ir.quant_format import QuantFormat, quantize, unpack

        fmt = QuantFormat(4, 32, "sym")
        q, scale = quantize(linear.weight.detach(), fmt)
        self.register_buffer("q", torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack(q, fmt), 1))
        self.register_buffer("scales_and_zeros", torch.stack([scale.t(), torch.zeros_like(scale.t())], -1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        return torch._weight_int4pack_mm_for_cpu(rows, self.q, 32, self.scales_and_zeros).reshape(*x.shape[:-1], -1)


def with_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """A copy of ``model`` whose linear layers but the LM head are ``make(linear)``."""
    import copy

    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child.bias is None and "lm_head" not in f"{name}.{child_name}":
                setattr(module, child_name, make(child))
    return out


def torchao_int8(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` with torchao's weight-only int8 on every linear but the LM head, its forward under
    ``torch.compile`` (inductor), as torchao's documentation runs it; None without torchao."""
    import copy

    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        return None
    out = copy.deepcopy(model)
    quantize_(out, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and "lm_head" not in fqn)
    out.forward = torch.compile(out.forward, backend="inductor")
    return out


def eager_loop(model: nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def run(ids: torch.Tensor, new: int) -> torch.Tensor:
        out = model(ids)
        tokens, cache = [out.logits[:, -1:].argmax(-1)], out.past_key_values
        for _ in range(new - 1):
            out = model(tokens[-1], past_key_values=cache)
            cache = out.past_key_values
            tokens.append(out.logits[:, -1:].argmax(-1))
        return torch.cat([ids, *tokens], 1)

    return run


def streamed_bytes(model: nn.Module, bits: int | None, group: int, head: bool = False) -> float:
    """Bytes of weights one decode step reads: quantized linears at ``bits`` (+ scales; the LM head
    too with ``head``), the rest float."""
    total = 0.0
    table = model.get_input_embeddings().weight
    for name, p in model.named_parameters():
        if p is table:
            continue
        if bits is not None and p.dim() == 2 and (head or "lm_head" not in name):
            k = p.shape[1]
            total += p.numel() * bits / 8 + p.shape[0] * (k // (group or k)) * 4
        else:
            total += p.numel() * p.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="large", choices=sorted(SIZES))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated substrings of contender names to run")
    ns = parser.parse_args()
    wanted = [w for w in ns.only.split(",") if w]

    def keep(name: str) -> bool:
        return not wanted or name == "lamina fp32" or any(w in name for w in wanted)

    import lamina

    torch.set_num_threads(2)
    model = make_llama(ns.model)
    bandwidth = copy_bandwidth_gbs()
    print(f"machine: {machine()}; copy bandwidth {bandwidth:.1f} GB/s; model {ns.model}, {ns.new_tokens} new tokens")
    prompt = torch.randint(1, 32000, (1, 32), generator=torch.Generator().manual_seed(0))
    contenders: dict[str, tuple[Callable, float]] = {"eager fp32": (eager_loop(model), streamed_bytes(model, None, 0))}
    if keep("torch int8"):
        contenders["torch int8 (_weight_int8pack_mm)"] = (eager_loop(with_linears(model, Int8Linear)),
                                                          streamed_bytes(model, 8, 0))
    if keep("torch int4"):
        contenders["torch int4 g32 (_weight_int4pack_mm_for_cpu)"] = (eager_loop(with_linears(model, Int4Linear)),
                                                                      streamed_bytes(model, 4, 32))
    if keep("torchao") and (ao := torchao_int8(model)) is not None:
        contenders["torchao int8 under inductor"] = (eager_loop(ao), streamed_bytes(model, 8, 0))
    for name, pipeline in PIPELINES.items():
        if not keep(name):
            continue
        if "budget" in pipeline:
            batches = [torch.randint(1, 32000, (4, 64), generator=torch.Generator().manual_seed(i)) for i in range(4)]
            stats = lamina.calibrate(model, batches)
            loop = lamina_loop(model, pipeline, stats)
            probe = lamina.compile(model, (prompt,), pipeline=pipeline, calibration=stats, fallback=False)
            nbytes = streamed_bytes(model, None, 0) - sum(
                stats.linears[r.weight].out_features * stats.linears[r.weight].in_features * 4 - r.nbytes
                for r in probe.quantization if r.fmt is not None)
            contenders[name] = (loop, nbytes)
            continue
        bits = None if "fp32" in name else (8 if "int8" in name else 4)  # W8A8 reads int8 weights too
        contenders[name] = (lamina_loop(model, pipeline),
                            streamed_bytes(model, bits, 32 if bits == 4 else 0, head="head too" in name))
    times: dict[str, list[float]] = {name: [] for name in contenders}
    tokens: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for name, (run, _) in contenders.items():  # warm: compiles
            tokens[name] = run(prompt, 4)
        for _ in range(ns.repeats):
            for name, (run, _) in contenders.items():
                start = time.perf_counter()
                first = run(prompt, 1)
                prefill = time.perf_counter() - start
                start = time.perf_counter()
                tokens[name] = run(prompt, ns.new_tokens)
                total = time.perf_counter() - start
                times[name].append((total - prefill) / (ns.new_tokens - 1) * 1e3)
                del first
    base = sorted(times["lamina fp32"])[len(times["lamina fp32"]) // 2]
    rows = []
    for name, (_, nbytes) in contenders.items():
        ms = sorted(times[name])[len(times[name]) // 2]
        gbs = nbytes / ms / 1e6
        same = (tokens[name] == tokens["eager fp32"]).float().mean().item()
        rows.append((name, f"{ms:.2f}", f"{base / ms:.2f}x", f"{nbytes / 1e6:.0f}", f"{gbs:.1f}",
                     f"{gbs / bandwidth:.0%}", f"{same:.0%}"))
    print_table(["contender", "ms/token", "vs lamina fp32", "weights MB", "GB/s", "of copy bw", "same tokens"], rows)
    prefill_table(model, [name for name in PREFILL if keep(name)])


def prefill_table(model: nn.Module, names: list[str]) -> None:
    """One forward of 4 x 128 tokens: lamina fp32, int8, int4 (medians of 5)."""
    import lamina

    ids = torch.randint(1, 32000, (4, 128), generator=torch.Generator().manual_seed(1))
    rows = []
    with torch.inference_mode():
        compiled = {name: lamina.compile(model, (ids,), pipeline=PIPELINES[name], fallback=False) for name in names}
        times: dict[str, list[float]] = {name: [] for name in compiled}
        for fn in compiled.values():
            fn(ids)
        for _ in range(5):
            for name, fn in compiled.items():
                start = time.perf_counter()
                fn(ids)
                times[name].append((time.perf_counter() - start) * 1e3)
    base = sorted(times["lamina fp32"])[2]
    for name in compiled:
        ms = sorted(times[name])[2]
        rows.append((name, f"{ms:.1f}", f"{base / ms:.2f}x"))
    print("\nprefill, 4 x 128 tokens")
    print_table(["contender", "ms", "vs lamina fp32"], rows)


if __name__ == "__main__":
    main()
