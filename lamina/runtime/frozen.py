"""A plan as data: its wrapper source, how to rebuild each object the source names, and the C kernels.

A cpu plan (``runtime/program.py``) is straight-line Python that calls kernels and torch ops on
objects made when it was built: views of the weights and of the arena, flat kernel views, error
slots, weight snapshots, kernel functions. ``runtime/freeze.py`` turns one plan of a module with
fixed shapes into a ``FrozenPlan``: the source, and per name a recipe (a view of a weight, of the
arena, or of a stored buffer by byte offset, shape and strides; a kernel of the library by name; a
number; a kernel's checks). ``thaw`` rebuilds the objects from the saved weights, a fresh arena and
the stored buffers, and compiles the source: no tracing, no planning, no SymPy and no Numba, so a
saved module's first output comes within a fraction of a second of ``lamina.load``.

This module imports only torch, NumPy and lamina's leaf modules.
"""
from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..codegen.kernel import KernelCheck
from ..errors import InputMismatchError
from .kernel_errors import raise_kernel_errors
from .native_kernels import Flat, NativeFunction, NativeLibrary, cpu_features
from .snapshot import refresh_all

VERSION = 1
_DTYPES = {str(d): d for d in (torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32,
                               torch.int16, torch.int8, torch.uint8, torch.bool)}


def kernel_view(tensor: torch.Tensor) -> Flat:
    """What the C kernels take (as ``NativeCpuTarget.view``): 16-bit floats as their int16 bits."""
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)
    return Flat(tensor)


# names a plan's source may use that are not made per plan: the same object in every thawed plan
BUILTINS: dict[str, Any] = {
    "torch": torch, "np": np, "math": math, "raise_kernel_errors": raise_kernel_errors, "refresh_all": refresh_all,
    "_kernel_view": kernel_view, "InputMismatchError": InputMismatchError,
}


@dataclass
class FrozenPlan:
    """What ``thaw`` needs besides the weights: see the module doc. ``inputs`` are the (shape, dtype)
    the plan was built for; ``output`` how the module returns its results: ``single`` (one tensor),
    ``tuple`` or ``list``."""

    source: str
    statics: dict[str, dict[str, Any]]
    functions: list[NativeFunction]
    arena_bytes: int
    inputs: list[tuple[tuple[int, ...], str]]
    output: str
    built_with: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["functions"] = [{"name": f.name, "arguments": f.arguments} for f in self.functions]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "FrozenPlan":
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"frozen plan version {data.get('version')}, this lamina reads {VERSION}")
        data["functions"] = [NativeFunction(f["name"], f["arguments"]) for f in data["functions"]]
        data["inputs"] = [(tuple(shape), dtype) for shape, dtype in data["inputs"]]
        return cls(**data)


def built_with() -> dict[str, Any]:
    """What a frozen plan depends on beyond its file: lamina, torch, the machine and its CPU's features."""
    from .. import __version__

    return {"lamina": __version__, "torch": torch.__version__, "machine": platform.machine(),
            "system": platform.system(), "cpu_features": cpu_features()}


def incompatibility(saved: Mapping[str, Any]) -> str | None:
    """Why a plan frozen where ``saved`` (its ``built_with``) describes cannot run here, or None. Kernels
    compiled for CPU features this one lacks could stop on an illegal instruction: they are not loaded."""
    here = built_with()
    for key in ("lamina", "torch", "machine", "system"):
        if saved.get(key) != here[key]:
            return f"it was frozen with {key} {saved.get(key)}, this is {here[key]}"
    missing = sorted(set(saved.get("cpu_features") or ()) - set(here["cpu_features"]))
    if missing:
        return f"its kernels use CPU features this CPU lacks ({', '.join(missing[:8])})"
    if not saved.get("cpu_features") or not here["cpu_features"]:
        return "the CPU features it was compiled for are unknown"
    return None


def thaw(plan: FrozenPlan, weights: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor],
         library: NativeLibrary) -> Callable[[list[torch.Tensor], tuple], list[torch.Tensor]]:
    """The plan's ``run(inputs, sizes)``, its objects rebuilt over ``weights``, a new arena and copies of
    the stored ``buffers``."""
    arena = torch.empty(max(plan.arena_bytes, 1), dtype=torch.uint8)
    copies = {key: t.clone() for key, t in buffers.items()}  # kernels write some (error slots)
    bases = {"arena": arena, **{f"weight:{k}": t for k, t in weights.items()},
             **{f"buffer:{k}": t for k, t in copies.items()}}
    namespace: dict[str, Any] = {}
    for name, recipe in plan.statics.items():
        kind = recipe["kind"]
        if kind == "builtin":
            namespace[name] = BUILTINS[name]
        elif kind in ("tensor", "flat"):
            tensor = _view(bases[recipe["base"]], recipe)
            namespace[name] = kernel_view(tensor) if kind == "flat" else tensor
        elif kind == "kernel":
            namespace[name] = library[recipe["name"]]
        elif kind == "number":
            namespace[name] = recipe["value"]
        elif kind == "checks":
            namespace[name] = tuple(KernelCheck(**c) for c in recipe["value"])
        elif kind == "empty_list":
            namespace[name] = []
        else:
            raise ValueError(f"unknown kind {kind!r} of {name} in a frozen plan")
    exec(compile(plan.source, "<lamina frozen plan>", "exec"), namespace)  # noqa: S102 - lamina's own wrapper
    return namespace["run"]


def _view(base: torch.Tensor, recipe: Mapping[str, Any]) -> torch.Tensor:
    dtype = _DTYPES[recipe["dtype"]]
    itemsize = torch.empty((), dtype=dtype).element_size()
    start = base.storage_offset() * base.element_size() + recipe["byte_offset"]
    if start % itemsize:
        raise ValueError(f"a frozen view at byte {start} is not aligned to its {itemsize}-byte elements")
    view = torch.empty(0, dtype=dtype)
    view.set_(base.untyped_storage(), start // itemsize, recipe["shape"], recipe["stride"])
    return view
