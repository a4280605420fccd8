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
from collections.abc import Mapping
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


def freeze(graph: Graph, weights: Mapping[str, torch.Tensor],
           output: str) -> tuple[FrozenPlan, dict[str, torch.Tensor], bytes]:
    """The frozen plan of ``graph`` over ``weights`` (the tensors the file stores), the buffers it
    needs stored beside them (by key), and its kernel library's bytes; ``output`` is how the module
    returns its results (``FrozenPlan.output``)."""
    from .native_cpu import NativeCpuTarget

    if any(not isinstance(d, int) for v in graph.inputs for d in v.type.shape):
        raise NotFreezable("its input shapes are symbolic (a plan is frozen for fixed shapes)")
    if graph.states:
        raise NotFreezable("it keeps state between calls")
    if any(op.name == "qlinear" for op in graph.walk()):
        raise NotFreezable("its quantized linears run on the cpu target's Numba kernels, which a frozen plan "
                           "does not carry")
    target = NativeCpuTarget()
    try:
        executor = Executor(graph, target)
    except NativeBuildError as e:
        raise NotFreezable(str(e)) from None
    if executor.loops:
        raise NotFreezable("it has loop or routed-layer regions")
    plan = executor.build_plan((), weights)
    names = set(re.findall(r"\b[A-Za-z_]\w*\b", plan.source))
    glb = plan.run.__globals__
    bases = _Bases(weights, plan.arena)
    statics = {name: _recipe(name, glb[name], bases) for name in sorted(names & set(glb)) if name != "run"}
    inputs = [(tuple(v.type.shape), str(_torch_dtype(v))) for v in graph.inputs]
    frozen = FrozenPlan(plan.source, statics, target.functions, 0 if plan.arena is None else plan.arena.numel(),
                        inputs, output, built_with())
    return frozen, bases.stored, target.library_bytes or b""


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
