"""Kernels that differ only in their sizes compile once: the sizes become arguments.

A CNN has the same fused kernel (batch norm + activation, a residual add, a scale by a squeeze
vector) at every stage, each with its own channel count and resolution baked in as constants, and
every one of them used to cost a Numba compile (about a second each). ``share_structure`` lifts
those constants into integer (and float) parameters, groups kernels whose lifted forms are equal,
and gives each group one generic kernel; every use passes its own values. With each use's values
substituted, the generic kernel is exactly that use's original kernel, so sharing never changes a
result.

Lifting must cost nothing measurable at run time, so some constants stay literal, and a kernel
that differs from its group in one of them is simply not shared:

- 0, 1 and -1 (offsets and identities LLVM folds), and float constants that are not whole numbers
  of at least 2 (an epsilon, a slope: model values, not sizes; a mean's element count is lifted);
- everything in a kernel whose per-element index arithmetic is more than affine: one that divides,
  clamps or compares an index that changes per element (a pointwise kernel's ``o // 49``, a padded
  convolution's ``min(max(j - 1, 0), 13)`` and bounds tests, a gather's range check). With
  constants LLVM folds those (divisions become multiplies and shifts, clamps vanish by range) and
  vectorizes; with variables a MobileNetV2 depthwise kernel ran 2-6x slower. Arithmetic per row
  (``o // 56`` in a row kernel) is lifted.
- everything in a kernel whose inner loop reads with a stride (a norm over the channels of an NCHW
  tensor through a permute): with the stride a variable, ConvNeXt-T's layer norms ran 2x slower.
- the extent of an inner loop shorter than ``MIN_LIFTED_EXTENT`` (and that number wherever it
  appears): a known short trip count is unrolled into whole vectors, while a variable one left a
  row of 14 to the scalar remainder loop (EfficientNet's batch norm + SiLU rows at 14 x 14 ran 3x
  slower).
- everything in a kernel whose inner loop the cpu printer splits at constant comparisons
  (``codegen/loop_split.py``: concats): the split needs the numbers.

A group of one keeps its original kernel: sharing only where it saves a compile.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import hashlib
from dataclasses import dataclass, replace
from typing import Any

from ..ir.dtypes import DType
from .kernel import Call, Const, Expr, Kernel, Load, Loop, LoopVar, Reduce, Var, map_body
from .index_kinds import indexes_beyond_affine, statements, strided_inner_reads
from .loop_split import split_points

_LIFTED_FLOATS = frozenset({DType.f32, DType.f64})
MIN_LIFTED_EXTENT = 128


@dataclass(frozen=True)
class SharedKernel:
    """A kernel as compiled (``kernel``, generic when shared) and this use's parameter ``values``
    (``kernel.params`` in order; numbers of the parameter's dtype)."""

    kernel: Kernel
    values: tuple[Any, ...] = ()


def share_structure(kernels: Sequence[Kernel], key: Callable[[Kernel], Any] = lambda k: None) -> list[SharedKernel]:
    """Each kernel as a SharedKernel: a group of two or more distinct kernels with equal lifted forms
    (and equal ``key``, e.g. the printer's serial/parallel choice) shares the generic kernel."""
    lifted = [lift_constants(k) for k in kernels]
    groups: dict[Any, set[Kernel]] = {}
    for k, (generic, _) in zip(kernels, lifted):
        groups.setdefault((generic, key(k)), set()).add(k)
    out = []
    for k, (generic, values) in zip(kernels, lifted):
        shared = len(groups[(generic, key(k))]) > 1
        out.append(SharedKernel(generic, values) if shared else SharedKernel(k))
    return out


def lift_constants(kernel: Kernel) -> tuple[Kernel, tuple[Any, ...]]:
    """``kernel`` with its liftable constants as parameters, named in order of first use (one per
    distinct value), and their values; a kernel with split loops, per-element index arithmetic beyond
    affine or strided inner reads comes back unchanged."""
    if any(isinstance(s, Loop) and split_points(s) for s in statements(kernel.body)) \
            or indexes_beyond_affine(kernel) or strided_inner_reads(kernel):
        return kernel, ()
    lifter = _Lifter(_short_extents(kernel))
    outer = lifter.expr(kernel.outer)
    row_extent = None if kernel.row_extent is None else lifter.expr(kernel.row_extent)
    buffers = tuple(replace(b, size=lifter.expr(b.size)) for b in kernel.buffers)
    body = map_body(kernel.body, lifter.expr)
    if not lifter.params:
        return kernel, ()
    generic = replace(kernel, name="kernel", outer=outer, row_extent=row_extent, buffers=buffers, body=body,
                      params=kernel.params + tuple(lifter.params.values()))
    generic = replace(generic, name=_generic_name(kernel.name, generic))
    return generic, tuple(_argument(dtype, value) for dtype, value in lifter.params)


def _generic_name(name: str, generic: Kernel) -> str:
    """The original's label with a digest of the generic form (named ``kernel``), marked ``g``."""
    digest = hashlib.sha256(repr(generic).encode()).hexdigest()[:10]
    return f"{name.rsplit('_', 1)[0]}_g{digest}"


class _Lifter:
    """Rewrites expressions, replacing each liftable constant with its parameter."""

    def __init__(self, kept: set[int]) -> None:
        self.kept = kept  # integers that stay literal wherever they appear
        self.params: dict[tuple[DType, Any], str] = {}  # (dtype, value) -> parameter name

    def expr(self, e: Expr) -> Expr:
        if isinstance(e, Const):
            if not _liftable(e) or (e.dtype is DType.i64 and int(e.value) in self.kept):
                return e
            key = (e.dtype, e.value)
            if key not in self.params:
                self.params[key] = f"{'c' if e.dtype is DType.i64 else 'f'}{len(self.params)}"
            return Var(e.dtype, self.params[key])
        if isinstance(e, LoopVar):
            return Var(e.dtype, e.name)  # its extent served the index simplification, now done
        if isinstance(e, Load):
            return Load(e.dtype, e.buffer, self.expr(e.index))
        if isinstance(e, Call):
            return Call(e.dtype, e.op, tuple(self.expr(a) for a in e.args), e.attrs)
        return e


def _short_extents(kernel: Kernel) -> set[int]:
    """Extents of inner loops shorter than ``MIN_LIFTED_EXTENT``."""
    return {int(s.extent.value) for s in statements(kernel.body)
            if isinstance(s, (Loop, Reduce)) and isinstance(s.extent, Const) and s.extent.value < MIN_LIFTED_EXTENT}


def _argument(dtype: DType, value: Any) -> Any:
    """The value as the kernel receives it: an int (int64), or a NumPy float of the constant's type."""
    return int(value) if dtype is DType.i64 else dtype.numpy.type(value)


def _liftable(c: Const) -> bool:
    if c.dtype not in _LIFTED_FLOATS and c.dtype is not DType.i64:
        return False
    v = float(c.value)
    return v.is_integer() and (abs(v) >= 2 if c.dtype is DType.i64 else v >= 2)
