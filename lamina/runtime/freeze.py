"""Freeze a compiled module's plan for a saved file (``runtime/frozen.py`` thaws it).

Only a module with fixed shapes, on the cpu backend, called with tensors and returning tensors (no
in-place updates of its arguments, no state between calls) is frozen; for any other, and on a
machine without a C compiler, ``freeze`` raises ``NotFreezable`` with the reason and the file is
saved without a frozen plan (it loads through the full path, as before). The plan is built with the
C kernels (``runtime/native_cpu.py``) over the very tensors the file stores, so each view's byte
offset into its weight holds for the tensors ``lamina.load`` reads back.
"""
from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import torch

from ..codegen.kernel import KernelCheck
from ..ir.core import Graph
from .frozen import BUILTINS, FrozenPlan, built_with
from .native_kernels import Flat, NativeBuildError
from .program import Executor


class NotFreezable(Exception):
    """Why a module's plan cannot be frozen (the file is saved without one)."""


# a frozen plan may be this much slower than the module's own plan (Numba kernels) and still be saved
SLOWER_AT_MOST = 1.1


def freeze(graph: Graph, weights: Mapping[str, torch.Tensor], output: str,
           planned: Callable[[list[torch.Tensor]], Any] | None = None) -> tuple[FrozenPlan, dict[str, torch.Tensor], bytes]:
    """The frozen plan of ``graph`` over ``weights`` (the tensors the file stores), the buffers it
    needs stored beside them (by key), and its kernel library's bytes; ``output`` is how the module
    returns its results (``FrozenPlan.output``). With ``planned`` (the module's own call on a list of
    inputs) the frozen plan must run within ``SLOWER_AT_MOST`` of it on random inputs of its shapes:
    gcc leaves some kernels scalar that LLVM vectorizes (strided reads under a mask), and a warm start
    should not cost every later call."""
    from .native_cpu import NativeCpuTarget

    if any(not isinstance(d, int) for v in graph.inputs for d in v.type.shape):
        raise NotFreezable("its input shapes are symbolic (a plan is frozen for fixed shapes)")
    if graph.states:
        raise NotFreezable("it keeps state between calls")
    if any(op.name == "qlinear" for op in graph.walk()):
        raise NotFreezable("its quantized linears run on the cpu target's Numba kernels, which a frozen plan "
                           "does not carry")
    target = NativeCpuTarget(numba_natives=False)
    try:
        executor = Executor(graph, target)
    except NativeBuildError as e:
        raise NotFreezable(str(e)) from None
    if executor.loops:
        raise NotFreezable("it has loop or routed-layer regions")
    plan = executor.build_plan((), weights)
    if planned is not None:
        _compare_speed(graph, lambda xs: plan.run(xs, ()), planned)
    names = set(re.findall(r"\b[A-Za-z_]\w*\b", plan.source))
    glb = plan.run.__globals__
    bases = _Bases(weights, plan.arena)
    statics = {name: _recipe(name, glb[name], bases) for name in sorted(names & set(glb)) if name != "run"}
    inputs = [(tuple(v.type.shape), str(_torch_dtype(v))) for v in graph.inputs]
    frozen = FrozenPlan(plan.source, statics, target.functions, 0 if plan.arena is None else plan.arena.numel(),
                        inputs, output, built_with())
    return frozen, bases.stored, target.library_bytes or b""


def _compare_speed(graph: Graph, frozen: Callable[[list[torch.Tensor]], Any],
                   planned: Callable[[list[torch.Tensor]], Any], rounds: int = 5) -> None:
    """Raise NotFreezable when ``frozen`` takes over ``SLOWER_AT_MOST`` times ``planned``'s median time
    (interleaved rounds). Integer inputs are zeros (always a valid index); a call that fails (a zero
    divisor) leaves the question open and the plan is frozen."""
    inputs = [torch.randn(v.type.shape).to(_torch_dtype(v)) if v.type.dtype.is_float
              else torch.zeros(v.type.shape, dtype=_torch_dtype(v)) for v in graph.inputs]
    times: dict[str, list[float]] = {"frozen": [], "planned": []}
    try:
        with torch.no_grad():  # not inference mode: a plan built now keeps its arena for normal calls
            for round_ in range(rounds + 2):
                for name, run in (("frozen", frozen), ("planned", planned)):
                    start = time.perf_counter()
                    run(inputs)
                    if round_ >= 2:  # the first two warm the caches (and compile what is lazy)
                        times[name].append(time.perf_counter() - start)
    except Exception:  # noqa: BLE001 - these inputs are not valid for the model: nothing measured
        return
    mine, theirs = statistics.median(times["frozen"]), statistics.median(times["planned"])
    if mine > SLOWER_AT_MOST * theirs:
        raise NotFreezable(f"its C kernels take {mine * 1e3:.2f} ms a call where its Numba kernels take "
                           f"{theirs * 1e3:.2f} ms (save with frozen=True to keep the fast start anyway)")


def _torch_dtype(v: Any) -> torch.dtype:
    from ..ir.dtypes import to_torch

    return to_torch(v.type.dtype)


class _Bases:
    """The memory each static tensor lies in: a weight, the arena, or a buffer stored with the plan
    (snapshots, error slots: anything else), named as ``thaw`` finds them."""

    def __init__(self, weights: Mapping[str, torch.Tensor], arena: torch.Tensor | None) -> None:
        self.known: dict[int, tuple[str, torch.Tensor]] = {}
        for key, t in weights.items():
            self.known.setdefault(t.untyped_storage().data_ptr(), (f"weight:{key}", t))
        if arena is not None:
            self.known[arena.untyped_storage().data_ptr()] = ("arena", arena)
        self.stored: dict[str, torch.Tensor] = {}

    def of(self, t: torch.Tensor) -> tuple[str, torch.Tensor]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.known:
            key = f"b{len(self.stored)}"
            whole = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).clone()
            self.stored[key] = whole
            self.known[ptr] = (f"buffer:{key}", torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()))
        return self.known[ptr]


def _recipe(name: str, value: Any, bases: _Bases) -> dict[str, Any]:
    if name in BUILTINS:
        return {"kind": "builtin"}
    if name == "_snapshots":  # snapshots' copies are stored as buffers; a loaded module's weights do not change
        return {"kind": "empty_list"}
    if isinstance(value, Flat):
        return {"kind": "flat", **_tensor_recipe(value.tensor, bases)}
    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", **_tensor_recipe(value, bases)}
    if callable(value) and hasattr(value, "argtypes"):  # a ctypes function of the kernel library
        return {"kind": "kernel", "name": value.__name__}
    if isinstance(value, tuple) and value and all(isinstance(c, KernelCheck) for c in value):
        return {"kind": "checks", "value": [asdict(c) for c in value]}
    if isinstance(value, (int, float)) or (hasattr(value, "dtype") and getattr(value, "shape", None) == ()):
        return {"kind": "number", "value": value.item() if hasattr(value, "item") else value}
    raise NotFreezable(f"its plan uses {name}, a {type(value).__name__}, which a frozen plan cannot rebuild")


def _tensor_recipe(t: torch.Tensor, bases: _Bases) -> dict[str, Any]:
    if t.device.type != "cpu":
        raise NotFreezable("its plan holds a tensor on another device")
    base_name, base = bases.of(t)
    offset = t.storage_offset() * t.element_size() - base.storage_offset() * base.element_size()
    return {"base": base_name, "byte_offset": offset, "dtype": str(t.dtype), "shape": list(t.shape),
            "stride": list(t.stride())}
