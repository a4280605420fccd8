"""Launch overhead: what lamina's cpu runtime costs per call beyond its kernels and library calls.

    python benchmarks/launch_overhead.py [--steps 200]

First table, one tiny kernel through each layer: the Numba kernel called directly; the generated
wrapper (plan.run: allocate the output, make its NumPy view, launch); the whole CompiledModule call
(input checks, pytree handling, wrapper); and eager PyTorch's dispatch of the same op, for scale.

Second table, the decode step of a tiny transformers Llama (hidden 64, 2 layers, a cache of 32 and
more positions, batch 1): the per-step time of the compiled decode module (``lamina.compile``,
``dynamic_shapes="auto"``, a new cache length every step), and how it splits into generated kernels,
library calls (GEMMs, attention) and lamina's own work (binding sizes, views, allocation, the
wrapper's Python). Kernels and library calls are timed by shims around each call in a second,
instrumented run; lamina's own time is the uninstrumented step minus them. Eager's and inductor's
steps on the same inputs are the scale.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lamina  # noqa: E402
from common import machine, print_table  # noqa: E402


class Tiny(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x) * 2.0


def per_call_us(fn, n: int = 20000) -> float:
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(5):  # best of five batches: the floor, not the noise
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


class Timed:
    """A callable that adds the time spent in ``fn`` to ``clock[0]``."""

    def __init__(self, fn: Callable[..., Any], clock: list[float]) -> None:
        self.fn, self.clock = fn, clock

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.clock[0] += time.perf_counter() - start


LIBRARY_FUNCTIONS = ("mm", "addmm", "matmul", "bmm", "cumsum", "stack", "topk", "sort", "argmax")


def instrumented(plan: Any, kernels: list[float], library: list[float]) -> Callable[..., Any]:
    """``plan.run`` re-made with every kernel (``K``/``N`` globals) and torch library call timed."""
    namespace = dict(plan.run.__globals__)
    for name, value in list(namespace.items()):
        if name[:1] in "KN" and name[1:].isdigit() and callable(value):
            namespace[name] = Timed(value, kernels)
    functional = SimpleNamespace(**{k: getattr(torch.nn.functional, k) for k in dir(torch.nn.functional)
                                    if not k.startswith("__")})
    for k in ("linear", "scaled_dot_product_attention", "conv2d", "max_pool2d", "avg_pool2d"):
        setattr(functional, k, Timed(getattr(torch.nn.functional, k), library))
    proxy = SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    for k in LIBRARY_FUNCTIONS:
        setattr(proxy, k, Timed(getattr(torch, k), library))
    proxy.nn = SimpleNamespace(functional=functional)
    namespace["torch"] = proxy
    exec(compile(plan.source, "<instrumented wrapper>", "exec"), namespace)  # noqa: S102 - lamina's own wrapper
    return namespace["run"]


def decode_step_table(steps: int, size: str = "tiny") -> None:
    """A Llama's decode step (``size`` of decode.py): total, kernels, library calls, lamina's own; eager and
    inductor."""
    from decode import make_llama

    model = make_llama(size)
    prompt = torch.randint(1, 32000, (1, 32))
    with torch.no_grad():
        out = model(prompt)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        decode = lamina.compile(model, (token,), example_kwargs={"past_key_values": cache},
                                dynamic_shapes="auto", fallback=False)
        inductor = torch.compile(model.forward, backend="inductor")
        caches = []
        for _ in range(steps):  # the caches of a real decode: a new length per step
            caches.append(cache)
            cache = decode(token, past_key_values=cache).past_key_values
        executor = decode._executor
        (plan,) = executor.plans.values()
        kernels, library = [0.0], [0.0]
        timed_run = instrumented(plan, kernels, library)

        def run_all(fn: Callable[[Any], Any]) -> float:
            start = time.perf_counter()
            for c in caches:
                fn(c)
            return (time.perf_counter() - start) / len(caches) * 1e6

        def timed(c: Any) -> Any:
            inputs = [token] + [t for layer in c.layers for t in (layer.keys, layer.values)]
            return timed_run(inputs, executor.binder([x.shape for x in inputs]))

        def plain(c: Any) -> Any:  # the executor alone: no input checks, no pytree, no cache objects
            inputs = [token] + [t for layer in c.layers for t in (layer.keys, layer.values)]
            return executor(inputs, decode._weights)

        contenders = {"lamina.compile": lambda c: decode(token, past_key_values=c),
                      "eager": lambda c: model(token, past_key_values=c),
                      "inductor": lambda c: inductor(input_ids=token, past_key_values=c)}
        for fn in contenders.values():  # warm: compiles inductor's graphs
            for c in caches[:3]:
                fn(c)
        caches = [_copy_cache(c) for c in caches]  # eager and inductor append to the cache they get
        totals: dict[str, list[float]] = {name: [] for name in contenders}
        instrumented_split, wrapper = [], []
        for _ in range(5):  # interleaved rounds; medians
            for name, fn in contenders.items():
                fresh = [_copy_cache(c) for c in caches]
                start = time.perf_counter()
                for c in fresh:
                    fn(c)
                totals[name].append((time.perf_counter() - start) / len(fresh) * 1e6)
            fresh = [_copy_cache(c) for c in caches]
            start = time.perf_counter()
            for c in fresh:
                plain(c)
            wrapper.append((time.perf_counter() - start) / len(fresh) * 1e6)
            kernels[0] = library[0] = 0.0
            fresh = [_copy_cache(c) for c in caches]
            start = time.perf_counter()
            for c in fresh:
                timed(c)
            instrumented_split.append((kernels[0] / len(fresh) * 1e6, library[0] / len(fresh) * 1e6))
    median = {name: sorted(v)[len(v) // 2] for name, v in totals.items()}
    k_us, lib_us = sorted(instrumented_split)[len(instrumented_split) // 2]
    run_us = sorted(wrapper)[len(wrapper) // 2]
    own, module = run_us - k_us - lib_us, median["lamina.compile"] - run_us
    print(f"\n{size} Llama decode step ({steps} steps, cache lengths 32..{31 + steps}; medians of 5 interleaved rounds)")
    print("lamina's own = the executor's call (binding sizes, views, allocation, the wrapper's Python) minus its")
    print("kernels and library calls; module = the CompiledModule around it (input checks, the pytree of")
    print("transformers' DynamicCache in and out, outputs rebuilt)")
    print_table(["contender", "us per step", "kernels", "library calls", "lamina's own", "module"],
                [("lamina.compile", f"{median['lamina.compile']:.0f}", f"{k_us:.0f}", f"{lib_us:.0f}", f"{own:.0f}",
                  f"{module:.0f}"),
                 ("eager", f"{median['eager']:.0f}", "", "", "", ""),
                 ("inductor", f"{median['inductor']:.0f}", "", "", "", "")])


def _copy_cache(cache: Any) -> Any:
    import copy

    return copy.deepcopy(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--model", default="tiny", choices=("tiny", "medium", "large"),
                        help="the Llama of benchmarks/decode.py whose decode step is split")
    ns = parser.parse_args()
    print(f"machine: {machine()}")
    model, x = Tiny(), torch.randn(8)
    compiled = lamina.compile(model, (x,))
    executor = compiled._executor
    (ck,) = executor.kernels.values()
    plan = executor.plan_for([x], {})
    x_np, out_np = x.numpy(), torch.empty(8).numpy()
    rows = [
        ("numba kernel, direct", per_call_us(lambda: ck.fn(x_np, out_np))),
        ("generated wrapper (plan.run)", per_call_us(lambda: plan.run([x], ()))),
        ("CompiledModule call", per_call_us(lambda: compiled(x))),
        ("eager: torch.exp(x) * 2.0", per_call_us(lambda: model(x))),
    ]
    print_table(["layer", "us per call"], [(name, f"{us:.2f}") for name, us in rows])
    decode_step_table(ns.steps, ns.model)


if __name__ == "__main__":
    main()
