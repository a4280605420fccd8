"""The backends lamina compiles for, one entry each: default pipeline, lowering steps, device, executor.

Everything that depends on the backend string reads its entry here (``backend(name)``); adding a
backend is one more entry.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .ir.dtypes import DType
from .ir.errors import LaminaError

if TYPE_CHECKING:
    from .ir.core import Graph
    from .options import CompileOptions


class UnknownBackendError(LaminaError, ValueError):
    """A backend name lamina does not know; the message lists the known ones."""


@dataclass(frozen=True)
class Backend:
    """One backend.

    ``default_pipeline`` runs when the user names none; ``lowering`` are the steps its executor needs
    after any pipeline (appended when the pipeline lacks them, and shown in dumps); ``device`` is
    where inputs and weights live; ``dtypes`` what its kernels compute in (None: every dtype);
    ``make_executor(graph, options)`` builds the callable that runs a lowered graph; ``check()``
    raises a clear error when the machine cannot run it (no GPU)."""

    name: str
    default_pipeline: str
    lowering: tuple[str, ...]
    device: str
    dtypes: frozenset[DType] | None
    make_executor: Callable[["Graph", "CompileOptions"], Any]
    check: Callable[[], None]
    doc: str


KERNEL_DTYPES = frozenset({DType.f64, DType.f32, DType.i64, DType.i32, DType.i8, DType.u8, DType.bool})
CPU_DTYPES = KERNEL_DTYPES | {DType.bf16, DType.f16}  # 16-bit floats computed in float32


def _reference(graph: "Graph", options: "CompileOptions") -> Any:
    from .runtime.compiled import reference_executor

    return reference_executor(graph)


# the languages each backend's kernels can be written in, its default first. The cpu backend's C
# kernels compile 4-8x faster than Numba's and run about as fast (benchmarks/RESULTS.md); without a C
# compiler on the machine it writes Numba.
KERNEL_LANGUAGES = MappingProxyType({"cpu": ("c", "numba"), "cuda": ("cuda_c", "numba"), "reference": ()})


def kernel_language(name: str, options: "CompileOptions") -> str | None:
    """The kernel language ``options`` ask of backend ``name`` (its default when they name none)."""
    languages = KERNEL_LANGUAGES[name]
    if options.kernel_language is None:
        if name == "cpu" and _no_c_compiler():
            return "numba"
        return languages[0] if languages else None
    if options.kernel_language not in languages:
        raise LaminaError(f"kernel_language={options.kernel_language!r} is not one of the {name} backend's: "
                          f"{', '.join(languages) or 'it compiles no kernels'}")
    return options.kernel_language


def _no_c_compiler() -> bool:
    from .runtime.native_kernels import compiler

    return compiler() is None


def _cpu(graph: "Graph", options: "CompileOptions") -> Any:
    from .runtime.cpu import CpuExecutor

    if kernel_language("cpu", options) == "c":  # C kernels in one shared library (runtime/native_cpu.py)
        from .runtime.native_cpu import NativeCpuTarget
        from .runtime.program import Executor

        return Executor(graph, NativeCpuTarget(), options.poison)
    return CpuExecutor(graph, poison=options.poison)


def _cuda(graph: "Graph", options: "CompileOptions") -> Any:
    from .runtime.cuda import CudaExecutor

    return CudaExecutor(graph, kernel_language("cuda", options), poison=options.poison)


def _require_gpu() -> None:
    from .runtime.cuda import require_gpu

    require_gpu()


def _always() -> None:
    return None


BACKENDS = MappingProxyType({
    "cpu": Backend("cpu", "fold-norms,channels-last,canonicalize,fuse", ("newton-expand", "wrap"), "cpu", CPU_DTYPES, _cpu, _always,
                   "Numba kernels and torch library calls on the CPU (the default)"),
    "cuda": Backend("cuda", "fold-norms,canonicalize,fuse", ("newton-expand", "wrap"), "cuda", KERNEL_DTYPES, _cuda, _require_gpu,
                    "CUDA C (CuPy) or Numba-CUDA kernels on an NVIDIA GPU"),
    "reference": Backend("reference", "canonicalize", (), "cpu", None, _reference, _always,
                         "the NumPy interpreter: every op's reference semantics, slow, for checking"),
})


def backend(name: str) -> Backend:
    """The entry of backend ``name``; UnknownBackendError lists the known ones."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownBackendError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None
