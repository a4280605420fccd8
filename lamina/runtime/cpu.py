"""The cpu target: kernels as Numba ``@njit(parallel=True)`` functions over flat NumPy views."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..codegen.cache import KernelCache
from ..codegen.cpu_numba import MODULE_HEADER, PARALLEL_THRESHOLD, numba_source
from ..codegen.kernel import Kernel
from ..codegen.scratch import use_scratch_rows
from ..ir.core import Graph
from ..ir.dtypes import DType
from .program import BackendError, CompiledKernel, Executor, Target, work

__all__ = ["BackendError", "CpuExecutor", "CpuTarget"]


class CpuTarget(Target):
    name = "cpu"
    device = "cpu"
    split_last = True
    supported = frozenset({DType.f64, DType.f32, DType.i64, DType.i32, DType.i8, DType.u8, DType.bool})

    def __init__(self, cache: KernelCache | None = None) -> None:
        self.cache = cache or KernelCache()

    def source(self, kernel: Kernel) -> str:
        # small kernels run serially: starting threads would cost more than the work
        return numba_source(use_scratch_rows(kernel), parallel=work(kernel) >= PARALLEL_THRESHOLD)

    def compile(self, kernels: Sequence[CompiledKernel]) -> None:
        loaded: dict[str, Any] = {}
        for ck in kernels:
            key = f"{ck.kernel.name}_{'p' if 'parallel=True' in ck.source else 's'}"
            if key not in loaded:
                loaded[key] = getattr(self.cache.load(key, MODULE_HEADER + ck.source), ck.kernel.name)
            ck.fn = loaded[key]

    def view(self, tensor: torch.Tensor) -> Any:
        return tensor.numpy().reshape(-1)

    def view_expr(self, name: str) -> str:
        return f"{name}.contiguous().numpy().reshape(-1)"

    def launch(self, fn: str, args: Sequence[str], kernel: Kernel, outer: int, inner: int | None) -> str:
        return f"{fn}({', '.join(args)})"


def CpuExecutor(graph: Graph, cache: KernelCache | None = None, poison: bool = False) -> Executor:
    """An Executor of ``graph`` on the CPU."""
    return Executor(graph, CpuTarget(cache), poison)
