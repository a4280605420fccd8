"""``lamina demo``: compile the example models, check each against eager PyTorch, print a table."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .api import compile as lamina_compile
from .backends import backend as entry
from .models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp

DEMO_MODELS: dict[str, Callable[[], tuple[Any, tuple]]] = {
    "mlp": make_mlp,
    "gpt2-stack (4 layers)": make_gpt2_stack,
    "llama-block (GQA, rotary)": make_llama_block,
    "small-cnn": make_cnn,
}
TOLERANCE = 1e-5  # float32, relative to the output's largest magnitude


def _median_seconds(fn: Callable[[], Any], repeats: int, sync: Callable[[], Any] = lambda: None) -> float:
    fn()  # warm-up: first calls pay for allocation and library set-up
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()  # inference: compiled modules compute no gradients
def run_demo(repeats: int = 5, backend: str = "cpu") -> int:
    """Returns 0 when every model matches eager within TOLERANCE, else 1."""
    rows = []
    ok = True
    for name, factory in DEMO_MODELS.items():
        model, args = factory()
        start = time.perf_counter()
        compiled = lamina_compile(model, args, backend=backend)
        compiled(*args)  # the first call builds the plan and JIT-compiles (or loads) the kernels
        compile_s = time.perf_counter() - start
        fresh = tuple(torch.randn_like(a) if a.is_floating_point() else a for a in args)
        with torch.no_grad():
            expected = model(*fresh)
        got = compiled(*fresh).cpu()
        error = float((got - expected).abs().max() / expected.abs().max())
        ok &= error <= TOLERANCE
        sync: Callable[[], Any] = lambda: None
        if entry(backend).device == "cuda":  # compare like with like: eager on the GPU too
            model, fresh, sync = model.cuda(), tuple(a.cuda() for a in fresh), torch.cuda.synchronize
        with torch.no_grad():
            eager_s = _median_seconds(lambda: model(*fresh), repeats, sync)
        lamina_s = _median_seconds(lambda: compiled(*fresh), repeats, sync)
        rows.append((name, len(compiled.graph.ops), f"{error:.1e}", "ok" if error <= TOLERANCE else "MISMATCH",
                     f"{compile_s:.2f}", f"{eager_s * 1e3:.2f}", f"{lamina_s * 1e3:.2f}"))
    header = ("model", "ops", "max rel err", "check", "compile s", "eager ms", f"lamina[{backend}] ms")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(f"lamina demo: backend={backend}, float32, tolerance {TOLERANCE:g} relative, fresh random inputs")
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))
    print("all models match eager PyTorch" if ok else "SOME MODELS DO NOT MATCH eager PyTorch")
    return 0 if ok else 1
