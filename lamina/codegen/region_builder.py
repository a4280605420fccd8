"""Expressions for the values of one ``fused`` region: ``value_at(v, idx)`` is value ``v`` at multi-index ``idx``.

Block arguments become loads (views folded into the index); elementwise primitives become
``Call``s and composites their scalar formulas; every other op is looked up in ``KERNEL``,
the per-op kernel lowerings (registered in ``codegen/kernel_ops.py``); reductions become
accumulators computed once per row.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sympy

from ..ir.core import Op, Value
from ..ir.dtypes import DType
from ..ir.opdef import Category
from ..ir.ops import category, lookup, reduced_axes
from ..ir.scalar import ScalarOps, result_dtype
from ..ir.targets import NoLowering, OpTable
from .index_range import fits, index_range, nonnegative
from .kernel import I64, Call, Const, Expr, IndexAssumption, KernelCheck, Load, Var, add, canonical, const, floordiv, mod, mul


class LoweringError(NoLowering):
    """A region the kernel generator cannot express; names the op."""


@dataclass(frozen=True)
class Idx:
    """A multi-index; ``flat`` is its row-major offset in the value's own shape when known cheaply."""

    dims: tuple[Expr, ...]
    flat: Expr | None = None


class Sizes:
    """Static dims become constants; symbolic dims become i64 size arguments."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, d: Any) -> Expr:
        if isinstance(d, int):
            return const(d)
        return self.expr(sympy.sympify(d))

    def expr(self, e: sympy.Expr) -> Expr:
        if e.is_Integer:
            return const(int(e))
        if e.is_Symbol:
            if str(e) not in self.names:
                self.names.append(str(e))
            return Var(I64, str(e))
        if e.is_Add:
            out = self.expr(e.args[0])
            for a in e.args[1:]:
                out = add(out, self.expr(a))
            return out
        if e.is_Mul:
            out = self.expr(e.args[0])
            for a in e.args[1:]:
                out = mul(out, self.expr(a))
            return out
        if isinstance(e, sympy.floor) and e.args[0].is_Mul:
            num, den = e.args[0].as_numer_denom()
            return floordiv(self.expr(num), self.expr(den))
        raise LoweringError(f"cannot compute size {e} in a kernel")

    def numel(self, shape: Sequence[Any]) -> Expr:
        out: Expr = const(1)
        for d in shape:
            out = mul(out, self(d))
        return out


def unravel(flat: Expr, shape: Sequence[Any], sizes: Sizes) -> tuple[Expr, ...]:
    """Row-major multi-index of ``flat`` in ``shape`` (size-1 axes are 0; the first axis after only
    size-1 ones needs no modulo), so one position has one spelling whatever size-1 axes surround it."""
    dims = []
    leading = True  # every axis so far has size 1
    for axis, d in enumerate(shape):
        if isinstance(d, int) and d == 1:
            dims.append(const(0))
            continue
        q = floordiv(flat, _stride_of(shape, axis, sizes))
        dims.append(q if leading else mod(q, sizes(d)))
        leading = False
    return tuple(dims)


def _stride_of(shape: Sequence[Any], axis: int, sizes: Sizes) -> Expr:
    stride: Expr = const(1)
    for d in shape[axis + 1:]:
        stride = mul(stride, sizes(d))
    return stride


def linearize(idx: Sequence[Expr], shape: Sequence[Any], sizes: Sizes) -> Expr:
    flat: Expr = const(0)
    for i, d in zip(idx, shape):
        flat = add(mul(flat, sizes(d)), i)
    return flat


Lowering = Callable[["KernelBuilder", Op, "Idx", int], Expr]
KERNEL: OpTable[Lowering] = OpTable("kernel", error=LoweringError)  # op -> its value at an index (result k); see kernel_ops.py


class KernelBuilder:
    """Builds the scalar expression of each value of one region at a multi-index."""

    def __init__(self, region_args: Sequence[Value], names: Sequence[str]) -> None:
        self.sizes = Sizes()
        self.buffer_of = {id(a): n for a, n in zip(region_args, names)}
        self.producer: dict[int, tuple[Op, int]] = {}
        self.memo: dict[tuple, Expr] = {}
        self.reductions: list[tuple[str, str, DType, Expr]] = []  # (acc, kind, dtype, value in r)
        self.row_index: Any = None  # callable: inner var -> Idx over the row domain
        self.row_outer: tuple[Expr, ...] = ()  # the current row's position in the non-reduced dims
        self.row_axes: tuple[int, ...] = ()
        self.checks: list[KernelCheck] = []  # runtime checks, numbered from 1
        self.assumptions: list[IndexAssumption] = []  # checks the plan decides from sizes

    # -- values at indices --------------------------------------------------------------------
    def value_at(self, v: Value, idx: Idx) -> Expr:
        key = (id(v), idx.dims, idx.flat)  # the flat offset too: size-1 axes make different rows equal in dims
        if key not in self.memo:
            self.memo[key] = self._value_at(v, idx)
        return self.memo[key]

    def _value_at(self, v: Value, idx: Idx) -> Expr:
        shape, dtype = v.type.shape, v.type.dtype
        if id(v) in self.buffer_of:
            flat = idx.flat if idx.flat is not None else linearize(idx.dims, shape, self.sizes)
            return Load(dtype, self.buffer_of[id(v)], flat)
        op, k = self.producer[id(v)]
        if op.name not in KERNEL and category(op.name) is Category.ELEMENTWISE and not op.regions:
            return self.elementwise(op, idx)
        return KERNEL.get(op.name, op.describe())(self, op, idx, k)

    def broadcast(self, idx: Idx, out_shape: Sequence[Any], shape: Sequence[Any]) -> Idx:
        off = len(out_shape) - len(shape)
        dims = tuple(const(0) if s == 1 and out_shape[i + off] != 1 else idx.dims[i + off] for i, s in enumerate(shape))
        return Idx(dims, idx.flat if tuple(shape) == tuple(out_shape) else None)

    def operand(self, op: Op, i: int, idx: Idx) -> Expr:
        return self.value_at(op.operands[i], self.broadcast(idx, op.results[0].type.shape, op.operands[i].type.shape))

    def elementwise(self, op: Op, idx: Idx) -> Expr:
        """A primitive as one scalar call; a composite spelled in primitives by its formula."""
        args = tuple(self.operand(op, i, idx) for i in range(len(op.operands)))
        formula = lookup(op.name).scalar
        if formula is not None:
            return formula(kernel_scalars(args[0].dtype), *args, **op.attrs)
        return Call(op.results[0].type.dtype, op.name, args, tuple(sorted(op.attrs.items())))

    def as_index(self, e: Expr) -> Expr:
        return e if e.dtype is I64 else Call(I64, "cast", (e,), (("dtype", I64),))

    def checked_index(self, op: Op, index: Value, e: Expr, size: Any, wrap: bool) -> Expr:
        """``e``, an element of integer tensor ``index``, as a position along a dim of ``size``.

        Negative indices count from the end when ``wrap`` (``x[i]``), else they are errors like
        indices past the end (embedding, gather, index_select). Indices whose bounds the graph
        fixes (``index_range``) are checked once per plan, or not at all when they fit every size;
        the others are checked by the kernel, which then reads position 0 and reports the error."""
        e, n = self.as_index(e), self.sizes(size)
        what = f"{op.describe()} (a dim of size {size})"
        bounds = index_range(index, self.producer)
        if bounds is not None:
            proven = fits(bounds, size, wrap) == (True, True)
            if proven or bounds.exact:
                if not proven:  # exact bounds: where they do not fit, eager fails too; the plan raises
                    self.assumptions.append(IndexAssumption(bounds.lo, bounds.hi, size, wrap, what))
                if not wrap or nonnegative(bounds):
                    return e
                return Call(I64, "where", (Call(DType.bool, "lt", (e, const(0))), add(e, n), e))
        self.checks.append(KernelCheck("index", what, wrap))
        return Call(I64, "checked_index", (e, n, const(len(self.checks))), (("wrap", wrap),))

    # -- reductions -----------------------------------------------------------------------------
    def accumulate(self, kind: str, value_in_r: Expr) -> Expr:
        for acc, k, dt, v in self.reductions:
            if k == kind and v == value_in_r:
                return Var(dt, acc)
        acc = f"acc{len(self.reductions)}"
        self.reductions.append((acc, kind, value_in_r.dtype, value_in_r))
        return Var(value_in_r.dtype, acc)

    def row(self, op: Op, idx: Idx) -> tuple[Expr, Expr]:
        """For reduction ``op`` read at ``idx``: its operand at the reduction variable ``r``, and the
        number of reduced elements in the operand's dtype."""
        if self.row_index is None:
            raise LoweringError(f"{op.describe()} outside a row kernel")
        full = len(idx.dims) == op.operands[0].type.rank
        outer = tuple(d for i, d in enumerate(idx.dims) if i not in self.row_axes) if full else idx.dims
        if outer != self.row_outer and tuple(map(canonical, outer)) != tuple(map(canonical, self.row_outer)):
            # fusion keeps such reads out of the row's kernel (passes/fusion.py); the same row may be
            # spelled otherwise when read through a reshape (unravelled, then linearized again)
            raise LoweringError(f"internal: {op.describe()} is read at another row than the kernel's; "
                                "a fusion bug, please report it")
        x = op.operands[0]
        dt = x.type.dtype
        n = self.sizes.numel([x.type.shape[a] for a in reduced_axes(op)])
        count = Call(dt, "cast", (n,), (("dtype", dt),))
        return self.value_at(x, self.row_index(Var(I64, "r"))), count


def kernel_scalars(dtype: DType) -> ScalarOps:
    """Scalar formulas as kernel expressions in ``dtype``."""
    def call(op: str, args: Sequence[Expr], attrs: dict[str, Any]) -> Expr:
        return Call(result_dtype(op, dtype, attrs), op, tuple(args), tuple(sorted(attrs.items())))

    return ScalarOps(call, lambda value: Const(dtype, value))
