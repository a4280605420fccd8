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
- the divisor of an index division done per element (a pointwise kernel's ``o // 49``, a row
  loop's ``r // 14``): a division by a constant is a multiply and a shift that vectorizes, by a
  variable a scalar ``idiv`` (per row, as in ``o // 56`` of a row kernel, it is lifted);
- everything in a kernel whose inner loop the cpu printer splits at constant comparisons
  (``codegen/loop_split.py``: concats, padded convolutions): the split needs the numbers.

A group of one keeps its original kernel: sharing only where it saves a compile.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import hashlib
from dataclasses import dataclass, replace
from typing import Any

from ..ir.dtypes import DType
from .kernel import Call, Const, Expr, Kernel, Let, Load, Loop, LoopVar, Reduce, Var, body_exprs, map_body, walk
from .loop_split import split_points

_LIFTED_FLOATS = frozenset({DType.f32, DType.f64})
_DIVISIONS = frozenset({"floordiv", "mod"})


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
    distinct value), and their values; a kernel with split loops comes back unchanged."""
    if any(isinstance(s, Loop) and split_points(s) for s in _statements(kernel.body)):
        return kernel, ()
    lifter = _Lifter(_per_element_names(kernel))
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
    digest = hashlib.sha256(repr(replace(generic, name="kernel")).encode()).hexdigest()[:10]
    return f"{name.rsplit('_', 1)[0]}_g{digest}"


class _Lifter:
    """Rewrites expressions, replacing each liftable constant with its parameter."""

    def __init__(self, per_element: set[str]) -> None:
        self.per_element = per_element
        self.params: dict[tuple[DType, Any], str] = {}  # (dtype, value) -> parameter name

    def param(self, c: Const) -> Expr:
        if not _liftable(c):
            return c
        key = (c.dtype, c.value)
        if key not in self.params:
            self.params[key] = f"{'c' if c.dtype is DType.i64 else 'f'}{len(self.params)}"
        return Var(c.dtype, self.params[key])

    def expr(self, e: Expr) -> Expr:
        if isinstance(e, Const):
            return self.param(e)
        if isinstance(e, LoopVar):
            return Var(e.dtype, e.name)  # its extent served the index simplification, now done
        if isinstance(e, Load):
            return Load(e.dtype, e.buffer, self.expr(e.index))
        if isinstance(e, Call):
            args = [self.expr(a) for a in e.args]
            if e.op in _DIVISIONS and isinstance(e.args[1], Const) and self._per_element(e.args[0]):
                args[1] = e.args[1]  # a per-element division by a constant stays a multiply and a shift
            return Call(e.dtype, e.op, tuple(args), e.attrs)
        return e

    def _per_element(self, e: Expr) -> bool:
        return any(isinstance(x, Var) and x.name in self.per_element for x in walk(e))


def _argument(dtype: DType, value: Any) -> Any:
    """The value as the kernel receives it: an int (int64), or a NumPy float of the constant's type."""
    return int(value) if dtype is DType.i64 else dtype.numpy.type(value)


def _liftable(c: Const) -> bool:
    if c.dtype not in _LIFTED_FLOATS and c.dtype is not DType.i64:
        return False
    v = float(c.value)
    return v.is_integer() and (abs(v) >= 2 if c.dtype is DType.i64 else v >= 2)


def _per_element_names(kernel: Kernel) -> set[str]:
    """Names whose value changes from one element to the next: the loop variables of a kernel with
    inner loops (its ``o`` is a row) and what is bound inside them; else every name (``o`` is the
    element)."""
    if not any(isinstance(s, (Loop, Reduce)) for s in kernel.body):
        return {x.name for e in body_exprs(kernel.body) for x in walk(e) if isinstance(x, Var)} | {"o"}
    names: set[str] = set()
    for s in _statements(kernel.body):
        if isinstance(s, (Loop, Reduce)):
            names.add(s.var)
            names |= {t.name for t in _statements(s.body) if isinstance(t, Let)}
            names |= {t.acc for t in _statements(s.body) if isinstance(t, Reduce)}
    return names


def _statements(body: tuple):
    """Every statement, nested ones included."""
    for s in body:
        yield s
        if isinstance(s, (Loop, Reduce)):
            yield from _statements(s.body)

