"""``lamina run model.lamina``: load a saved module in this process, call it on random inputs of its
saved shapes, and report how long loading, the first call and later calls took."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LaminaError


@dataclass(frozen=True)
class RunReport:
    """Seconds: ``load`` (a frozen plan thawed, or parse, plan, kernels), ``first`` call, ``median`` of
    the later ``calls``; ``how`` it was loaded."""

    load: float
    first: float
    median: float
    calls: int
    outputs: list[str]
    how: str = "planned on load"

    def table(self, path: Path) -> str:
        rows = [("load", self.load), ("first call", self.first), (f"median of {self.calls} calls", self.median)]
        lines = [f"{path} ({self.how}):", *(f"  {name:<22} {seconds * 1e3:9.2f} ms" for name, seconds in rows)]
        return "\n".join([*lines, *(f"  output {o}" for o in self.outputs)])


def random_arguments(compiled: Any, sizes: dict[str, int], seed: int = 0) -> tuple[tuple, dict]:
    """(args, kwargs) for ``compiled`` (a CompiledModule): random tensors of its inputs' saved types
    (floats from a normal distribution, integers in [0, 2), booleans), its weights where the traced
    call took them as arguments, the traced constants; ``sizes`` gives symbolic dimensions."""
    import torch
    import torch.utils._pytree as pytree

    from .frontends.fx import ConstRole, InputRole
    from .ir.dtypes import to_torch

    generator = torch.Generator().manual_seed(seed)
    if hasattr(compiled, "input_specs"):  # a FrozenModule: fixed shapes, tensors only
        return tuple(_random(shape, dtype, generator) for shape, dtype in compiled.input_specs), {}
    inputs = compiled.graph.user_inputs
    flat: list[Any] = []
    for role in compiled.imported.roles:
        if isinstance(role, ConstRole):
            flat.append(role.value)
        elif isinstance(role, InputRole):
            ty = inputs[role.index].type
            shape = [_size(d, sizes, inputs[role.index].hint or f"input {role.index}") for d in ty.shape]
            flat.append(_random(shape, to_torch(ty.dtype), generator))
        else:
            flat.append(compiled._weights[role.key])
    return pytree.tree_unflatten(flat, compiled.imported.in_spec)


def _random(shape: Any, dtype: Any, generator: Any) -> Any:
    """Floats from a normal distribution, integers in [0, 2), booleans."""
    import torch

    if dtype.is_floating_point:
        return torch.randn(list(shape), generator=generator).to(dtype)
    return torch.randint(0, 2, list(shape), generator=generator).to(dtype)


def _size(d: Any, sizes: dict[str, int], name: str) -> int:
    if isinstance(d, int):
        return d
    symbol = str(d)
    if symbol not in sizes:
        raise LaminaError(f"input %{name} has the symbolic size {symbol}; give it with --size {symbol}=N")
    return sizes[symbol]


def run_saved(path: Path, repeats: int, sizes: dict[str, int], backend: str | None = None) -> RunReport:
    """Load ``path``, call it once, then ``repeats`` times; see RunReport."""
    import torch

    from .saved import load

    start = time.perf_counter()
    compiled = load(path, backend)
    loaded = time.perf_counter()
    args, kwargs = random_arguments(compiled, sizes)
    with torch.inference_mode():
        first_start = time.perf_counter()
        result = compiled(*args, **kwargs)
        first = time.perf_counter() - first_start
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            compiled(*args, **kwargs)
            times.append(time.perf_counter() - t)
    outputs = [f"{list(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in torch.utils._pytree.tree_leaves(result)
               if isinstance(t, torch.Tensor)]
    how = "frozen plan" if hasattr(compiled, "input_specs") else "planned on load"
    return RunReport(loaded - start, first, statistics.median(times) if times else float("nan"), repeats, outputs, how)
