"""The cuda target: kernels as CUDA C (``cupy.RawKernel``, default) or Numba-CUDA (``kernel_language="numba"``).

Tensors stay torch CUDA tensors; kernels see them as CuPy arrays through DLPack (no copy).
GEMMs are ``torch.mm`` (cuBLAS); every kernel launches on torch's current stream (the
wrapper makes it CuPy's and Numba's current stream too), so the program is ordered with
the caller's work on any stream.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..codegen.cache import KernelCache
from ..codegen.cuda_c import cuda_source, launch_config, launch_dims, vectorizable
from ..codegen.cuda_numba import BLOCK, MODULE_HEADER, cuda_numba_source
from ..codegen.kernel import Kernel
from ..ir.core import Graph, Op
from ..ir.dtypes import DType
from ..ir.size_code import Size, is_static
from .program import BackendError, CompiledKernel, Executor, PlanContext, Target
from .qlinear_call import qlinear_lines
from .qlinear_cuda import QLinearCuda

LANGUAGES = ("cuda_c", "numba")
NATIVE_OPS = frozenset({"qlinear"})  # ops the target runs with kernels of its own (CUDA C, either language)


def require_gpu() -> None:
    if not torch.cuda.is_available():
        raise BackendError("backend 'cuda' needs an NVIDIA GPU, and torch.cuda.is_available() is False here; "
                           "use backend='cpu' (the default)")


def _numba_cuda_numpy_shim() -> None:
    """numba-cuda releases that still name ``np.row_stack`` (gone in NumPy 2.4) fail while typing any
    kernel; alias it to its replacement ``np.vstack`` before numba-cuda's typing context loads."""
    import numpy as np

    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


class CudaTarget(Target):
    name = "cuda"
    device = "cuda"
    supported = frozenset({DType.f64, DType.f32, DType.i64, DType.i32, DType.i8, DType.u8, DType.bool})

    def __init__(self, kernel_language: str = "cuda_c", cache: KernelCache | None = None) -> None:
        if kernel_language not in LANGUAGES:
            raise BackendError(f"kernel_language must be one of {', '.join(LANGUAGES)}, got {kernel_language!r}")
        require_gpu()
        try:
            import cupy
        except ImportError as e:
            raise BackendError("backend 'cuda' needs CuPy: pip install 'lamina[cuda]'") from e
        self.cp = cupy
        self.language = kernel_language
        if kernel_language == "numba":
            _numba_cuda_numpy_shim()
        self.cache = cache or KernelCache()

    def source(self, kernel: Kernel) -> str:
        return cuda_source(kernel) if self.language == "cuda_c" else cuda_numba_source(kernel)

    def compile(self, kernels: Sequence[CompiledKernel]) -> None:
        loaded: dict[str, Any] = {}
        for ck in kernels:
            name = ck.kernel.name
            if name not in loaded:
                if self.language == "cuda_c":
                    fn = self.cp.RawKernel(ck.source, name, options=("-std=c++17",))
                    fn.compile()
                else:
                    fn = getattr(self.cache.load(f"{name}_cuda", MODULE_HEADER + ck.source), name)
                loaded[name] = fn
            ck.fn = loaded[name]

    def view(self, tensor: torch.Tensor) -> Any:
        return self.cp.from_dlpack(tensor.reshape(-1))

    def view_expr(self, name: str) -> str:
        return f"cp.from_dlpack({name}.contiguous().reshape(-1))"

    def launch(self, fn: str, args: Sequence[str], kernel: Kernel, outer: Size, inner: Size | None) -> str:
        """One launch line; when the sizes are per call, the grid is computed per call too."""
        if is_static(outer, inner):
            blocks, threads = launch_config(kernel, outer, inner)
            block_code, thread_code = str(blocks), str(min(threads, BLOCK) if self.language == "numba" else threads)
        else:
            dims = f"launch_dims({kernel.kind == 'row'}, {vectorizable(kernel)}, {outer}, {inner})"
            block_code, thread_code = f"{dims}[0]", f"{dims}[1]"
            if self.language == "numba":
                thread_code = f"min({thread_code}, {BLOCK})"
        n_buffers = len(kernel.buffers)
        if self.language == "cuda_c":
            values = list(args[:n_buffers]) + [f"np.int64({a})" for a in args[n_buffers:]]
            return f"{fn}(({block_code},), ({thread_code},), ({', '.join(values)},))"
        return f"{fn}[{block_code}, {thread_code}, _nstream]({', '.join(args)})"

    def native(self, op: Op) -> Any:
        """The cuda target's own kernel for ``qlinear`` (``runtime/qlinear_cuda.py``), compiled when planned."""
        return (lambda: None) if op.name in NATIVE_OPS else None

    def native_lines(self, kernel: Any, op: Op, args: Sequence[str], out: str, plan: PlanContext) -> list[str]:
        return qlinear_lines(op, list(args), out, plan, lambda fmt, k, n, act: QLinearCuda(fmt, k, n, self.cp, act))

    def namespace(self) -> dict[str, Any]:
        if self.language == "numba":
            from numba import cuda

            return {"cp": self.cp, "nb_cuda": cuda, "launch_dims": launch_dims}
        return {"cp": self.cp, "launch_dims": launch_dims}

    def prologue(self) -> list[str]:
        """Kernels join torch's current stream, so they are ordered with the GEMMs and the caller's work."""
        lines = ["_stream = torch.cuda.current_stream().cuda_stream",
                 "cp.cuda.ExternalStream(_stream).use()"]
        if self.language == "numba":
            lines.append("_nstream = nb_cuda.external_stream(_stream)")
        return lines


def CudaExecutor(graph: Graph, kernel_language: str = "cuda_c", poison: bool = False) -> Executor:
    """An Executor of ``graph`` on the GPU."""
    return Executor(graph, CudaTarget(kernel_language), poison)
