"""What ``lamina.load`` returns for a file with a frozen plan: the plan's wrapper, called directly.

A call with the saved shapes and dtypes (CPU tensors) runs the thawed plan (``runtime/frozen.py``).
Anything else (other shapes, keyword arguments, inputs that require grad, or any attribute of a
``CompiledModule`` such as ``graph``, ``profile`` or ``quantization``) goes to the full module,
built from the same file on first need (parse, plan, kernels: about as long as a load without a
frozen plan). The weights of a loaded module are fixed: the plan's copies of them (snapshots) are
not recomputed, so change a model's weights by compiling and saving it again.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from .frozen import _DTYPES, FrozenPlan


class FrozenModule:
    """Calls the frozen plan (see the module doc); ``full`` is the CompiledModule of the same file."""

    def __init__(self, run: Callable[..., list[torch.Tensor]], plan: FrozenPlan, build_full: Callable[[], Any],
                 model_name: str) -> None:
        self._frozen_run = run
        self._frozen_plan = plan
        self._build_full = build_full
        self._full: Any = None
        self._lock = threading.Lock()
        self._shapes = [torch.Size(shape) for shape, _ in plan.inputs]
        self._dtypes = [_DTYPES[dtype] for _, dtype in plan.inputs]
        self.model_name = model_name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs or not self._takes(args):
            return self.full(*args, **kwargs)
        inputs = [a.detach().contiguous() for a in args]
        with self._lock:  # the arena and the error slots are shared by all calls
            outputs = self._frozen_run(inputs, ())
        kind = self._frozen_plan.output
        return outputs[0] if kind == "single" else tuple(outputs) if kind == "tuple" else list(outputs)

    def _takes(self, args: tuple) -> bool:
        """Whether the frozen plan serves these arguments (else the full module checks or serves them)."""
        if len(args) != len(self._shapes):
            return False
        grad = torch.is_grad_enabled()
        return all(isinstance(a, torch.Tensor) and a.dtype == dtype and a.shape == shape and a.device.type == "cpu"
                   and not (grad and a.requires_grad) for a, shape, dtype in zip(args, self._shapes, self._dtypes))

    @property
    def input_specs(self) -> list[tuple[torch.Size, torch.dtype]]:
        """The (shape, dtype) of each argument the frozen plan takes."""
        return list(zip(self._shapes, self._dtypes))

    @property
    def full(self) -> Any:
        """The CompiledModule of the same file (built on first use)."""
        with self._lock:
            if self._full is None:
                self._full = self._build_full()
            return self._full

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_frozen") or name in ("_full", "_build_full", "_lock", "_shapes", "_dtypes"):
            raise AttributeError(name)
        return getattr(self.full, name)

    def __repr__(self) -> str:
        return (f"FrozenModule({self.model_name}: a frozen plan of {len(self._frozen_plan.functions)} C kernels for "
                f"inputs {[list(s) for s in self._shapes]})")
