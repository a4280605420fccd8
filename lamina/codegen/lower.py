"""Lower one ``fused`` region to a Kernel.

First the iteration space: a row kernel (one row per reduced slice, when the region has
reductions) or a pointwise one, and the index of each stored value in it. Then every stored
value becomes a scalar expression at that index (``region_builder.KernelBuilder``), and
scheduling binds every shared sub-expression to a ``Let`` in the outermost loop it can live in.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..ir.core import Graph, Op, Value
from ..ir.opdef import Category
from ..ir.ops import category, reduced_axes
from . import kernel_ops  # noqa: F401 - registers the per-op kernel lowerings
from .kernel import (ERROR_BUFFER, I64, Buffer, Call, Const, Expr, Kernel, Let, Load, Loop, Reduce, Store, Var, add,
                     bounded, const, mul)
from .index_kinds import indexes_beyond_affine
from .region_builder import Idx, KernelBuilder, LoweringError, Sizes, linearize, unravel


class _Scheduler:
    """Binds sub-expressions to Lets in the outermost scope where their loop variables exist."""

    def __init__(self) -> None:
        self.count = 0
        self.row: list[Any] = []
        self.row_memo: dict[Expr, Expr] = {}
        self.levels: dict[Expr, str] = {}

    def level(self, expr: Expr) -> str:
        """The innermost loop whose variable ``expr`` reads: ``r`` (a reduction), ``j`` or ``row``
        (memoized: a walk per sub-expression made lowering quadratic in the expression's depth)."""
        if isinstance(expr, Var):
            return expr.name if expr.name in ("r", "j") else "row"
        if not isinstance(expr, (Load, Call)):
            return "row"
        found = self.levels.get(expr)
        if found is None:
            children = [self.level(expr.index)] if isinstance(expr, Load) else [self.level(a) for a in expr.args]
            found = "r" if "r" in children else "j" if "j" in children else "row"
            self.levels[expr] = found
        return found

    def bind(self, expr: Expr, scope: list[Any], memo: dict[Expr, Expr], scope_level: str) -> Expr:
        if isinstance(expr, (Const, Var)):
            return expr
        level = self.level(expr)
        if level == "row" and scope_level != "row":
            scope, memo, scope_level = self.row, self.row_memo, "row"
        if expr in memo:
            return memo[expr]
        if isinstance(expr, Load):
            new: Expr = Load(expr.dtype, expr.buffer, self.bind(expr.index, scope, memo, scope_level))
        else:
            assert isinstance(expr, Call)
            new = Call(expr.dtype, expr.op, tuple(self.bind(a, scope, memo, scope_level) for a in expr.args), expr.attrs)
        if expr.dtype is I64 and isinstance(new, Call) and new.op in ("add", "mul", "mod", "floordiv", "sub"):
            if all(isinstance(a, (Const, Var)) for a in new.args):
                memo[expr] = new
                return new  # cheap index arithmetic stays inline
        name = f"t{self.count}"
        self.count += 1
        scope.append(Let(name, new))
        memo[expr] = Var(expr.dtype, name)
        return memo[expr]


def lower_kernels(graph: Graph, split_last: bool = False, nested: bool = True) -> list[tuple[Op, Kernel]]:
    """Every ``fused`` op of a lowered graph with its Kernel (buffers ``in0..``, ``out0..``); with
    ``nested``, also those in program bodies (``iterate``)."""
    found = []
    for op in graph.walk() if nested else graph.ops:
        if op.name == "fused":
            found.append((op, lower_region(op, [f"in{i}" for i in range(len(op.operands))],
                                           [f"out{i}" for i in range(len(op.results))], split_last)))
    return found


@dataclass(frozen=True)
class _Space:
    """A kernel's iteration space: ``outer`` rows (or elements) in parallel, each with a serial loop of
    ``inner`` (the reduced axes of a row kernel, or a split-off last dim; None: no loop)."""

    kind: str                      # "row" or "pointwise"
    shape: tuple                   # the row domain (row kernels) or the output shape
    element: Idx                   # an element's index, in the loop variables o and j
    outer: Expr
    inner: Expr | None
    per_row: frozenset = frozenset()  # shapes of values computed once per row (reduced, kept or dropped)


def lower_region(op: Op, input_names: Sequence[str], output_names: Sequence[str], split_last: bool = False) -> Kernel:
    """The Kernel computing ``op``'s (a ``fused`` op) results from its operands.

    ``split_last`` (CPU): a pointwise kernel over a shape whose last dim is static and >= 8 loops over
    the rows in parallel and the last dim serially, so broadcast loads along it (a bias) are contiguous
    and the row index arithmetic is hoisted out of the inner loop.
    """
    if split_last:  # short rows over several trailing dims, where that keeps every index affine
        merged = _lower(op, input_names, output_names, True, merge_rows=True)
        if merged is not None:
            return merged
    kernel = _lower(op, input_names, output_names, split_last)
    assert kernel is not None
    return kernel


def _lower(op: Op, input_names: Sequence[str], output_names: Sequence[str], split_last: bool,
           merge_rows: bool = False) -> Kernel | None:
    """``lower_region``'s kernel; with ``merge_rows``, the pointwise form whose rows span the trailing dims
    (see ``_merged_rows``), or None where there is none or it indexes beyond affine arithmetic."""
    region = op.regions[0]
    builder = KernelBuilder(region.args, input_names)
    for inner in region.ops:
        for k, v in enumerate(inner.results):
            builder.producer[id(v)] = (inner, k)
    scans = [o for o in region.ops if category(o.name) is Category.SCAN]
    if scans:
        return None if merge_rows else _name(_scan_kernel(op, scans, builder, input_names, output_names, split_last))
    if merge_rows:
        space = _merged_rows(region, builder)
        if space is None:
            return None
    else:
        space = _iteration_space(region, builder, split_last)
    body = _schedule(builder, space, _stores(op, output_names, builder, space))
    buffers = _buffers(region.args, input_names, region.results, output_names, builder.sizes)
    if builder.checks:
        buffers += (Buffer(ERROR_BUFFER, I64, const(3), output=True),)
    kernel = Kernel("kernel", space.kind, buffers, tuple(builder.sizes.names), space.outer, body, space.inner,
                    tuple(o.name for o in region.ops if o.name != "yield"),
                    checks=tuple(builder.checks), assumptions=tuple(builder.assumptions))
    if merge_rows and indexes_beyond_affine(kernel):
        return None
    return _name(kernel)


MIN_ROW = 128  # a pointwise row shorter than this spans more trailing dims, when it can
MIN_ROWS = 16  # ... while as many rows are left for the threads


def _merged_rows(region: Any, builder: KernelBuilder) -> _Space | None:
    """The pointwise space whose rows are the fewest trailing dims holding ``MIN_ROW`` elements, when
    the last dim alone is shorter: an NCHW batch norm at 14 x 14 loops over rows of 196 instead of 14
    (vectorized whole, and of one length at every channel count). None when no reduction-free region
    of static shape has such a split."""
    if any(category(x.name) is Category.REDUCTION for x in region.ops):
        return None
    shape = tuple(region.results[0].type.shape)
    if len(shape) < 3 or not all(isinstance(d, int) for d in shape) or shape[-1] >= MIN_ROW:
        return None
    for k in range(2, len(shape)):
        row, rows = math.prod(shape[-k:]), math.prod(shape[:-k])
        if rows < MIN_ROWS:
            return None
        if row >= MIN_ROW:
            j = bounded(Var(I64, "j"), const(row))
            element = Idx(unravel(Var(I64, "o"), shape[:-k], builder.sizes) + unravel(j, shape[-k:], builder.sizes),
                          add(mul(Var(I64, "o"), const(row)), j))
            return _Space("pointwise", shape, element, const(rows), const(row))
    return None


def _iteration_space(region: Any, builder: KernelBuilder, split_last: bool) -> _Space:
    """Rows of the first reduction's operand when the region reduces (telling ``builder`` how to index
    a row), else the output's elements."""
    sizes, o = builder.sizes, Var(I64, "o")
    reductions = [x for x in region.ops if category(x.name) is Category.REDUCTION]
    if reductions:
        first = reductions[0]
        row_shape = tuple(first.operands[0].type.shape)
        axes = reduced_axes(first)
        outer_shape = [d for i, d in enumerate(row_shape) if i not in axes]
        inner_shape = [d for i, d in enumerate(row_shape) if i in axes]
        inner_n = sizes.numel(inner_shape)
        trailing = axes == tuple(range(len(row_shape) - len(axes), len(row_shape)))
        outer_dims = unravel(o, outer_shape, sizes)

        def row_index(var: Var) -> Idx:
            var = bounded(var, inner_n)  # a static row length lets index arithmetic drop its divisions
            inner_dims = iter(unravel(var, inner_shape, sizes))
            outer = iter(outer_dims)
            dims = tuple(next(inner_dims) if i in axes else next(outer) for i in range(len(row_shape)))
            return Idx(dims, add(mul(o, inner_n), var) if trailing else None)

        builder.row_index = row_index
        builder.row_outer, builder.row_axes = tuple(outer_dims), axes
        per_row = frozenset({tuple(1 if i in axes else d for i, d in enumerate(row_shape)),
                             tuple(d for i, d in enumerate(row_shape) if i not in axes)})
        return _Space("row", row_shape, row_index(Var(I64, "j")), sizes.numel(outer_shape), inner_n, per_row)
    shape = tuple(region.results[0].type.shape)
    last = shape[-1] if shape else None
    if split_last and len(shape) >= 2 and isinstance(last, int) and last >= 8:
        j = bounded(Var(I64, "j"), const(last))
        element = Idx(unravel(o, shape[:-1], sizes) + (j,), add(mul(o, const(last)), j))
        return _Space("pointwise", shape, element, sizes.numel(shape[:-1]), const(last))
    return _Space("pointwise", shape, Idx(unravel(o, shape, sizes), o), sizes.numel(shape), None)


Stores = tuple[list[tuple[str, Expr, Expr]], list[tuple[str, Expr, Expr]]]


def _stores(op: Op, output_names: Sequence[str], builder: KernelBuilder, space: _Space) -> Stores:
    """(per-row stores, per-element stores): each result's (buffer, flat index, value)."""
    o, sizes = Var(I64, "o"), builder.sizes
    per_row, per_element = [], []
    for v, name in zip(op.regions[0].results, output_names):
        shape = tuple(v.type.shape)
        if shape != space.shape and shape in space.per_row:
            per_row.append((name, o, builder.value_at(v, Idx(tuple(unravel(o, shape, sizes)), o))))
        elif shape == space.shape:
            element = space.element
            flat = element.flat if element.flat is not None else linearize(element.dims, shape, sizes)
            per_element.append((name, flat, builder.value_at(v, element)))
        else:
            raise LoweringError(f"{op.describe()}: result of shape {list(shape)} does not fit the kernel's "
                                f"iteration space {list(space.shape)}")
    return per_row, per_element


def _schedule(builder: KernelBuilder, space: _Space, stores: Stores) -> tuple:
    """The kernel body of one row (or element): reductions, per-row stores, then the element loop."""
    stores_row, stores_elem = stores
    sched = _Scheduler()
    body: list[Any] = sched.row
    for acc, kind, dtype, value in builder.reductions:
        inner: list[Any] = []
        bound = sched.bind(value, inner, {}, "r")
        body.append(Reduce(acc, kind, dtype, "r", space.inner, tuple(inner), bound))
    for name, index, value in stores_row:
        body.append(Store(name, sched.bind(index, body, sched.row_memo, "row"),
                          sched.bind(value, body, sched.row_memo, "row")))
    if stores_elem:
        looped = space.inner is not None
        loop_body: list[Any] = []
        level = "j" if looped else "row"
        target = loop_body if looped else body
        memo: dict[Expr, Expr] = {} if looped else sched.row_memo
        target.extend(Store(n, sched.bind(i, target, memo, level), sched.bind(v, target, memo, level))
                      for n, i, v in stores_elem)
        if looped:
            body.append(Loop("j", space.inner, tuple(loop_body)))
    return tuple(body)


def _buffers(region_args: Sequence[Value], input_names: Sequence[str], results: Sequence[Value],
             output_names: Sequence[str], sizes: Sizes) -> tuple[Buffer, ...]:
    return tuple(Buffer(n, a.type.dtype, sizes.numel(a.type.shape)) for n, a in zip(input_names, region_args)) + \
        tuple(Buffer(n, v.type.dtype, sizes.numel(v.type.shape), output=True) for n, v in zip(output_names, results))


def _scan_kernel(op: Op, scans: Sequence[Op], builder: KernelBuilder, input_names: Sequence[str],
                 output_names: Sequence[str], split_last: bool) -> Kernel:
    """A ``layer_scan`` alone in its region: one thread per element of the base runs the prefix sum over
    the layer axis, unrolled (the layer count is static), so each row of the result is one store."""
    region = op.regions[0]
    if len(scans) != 1 or len(region.results) != 1 or region.results[0] is not scans[0].results[0]:
        raise LoweringError(f"{op.describe()}: a layer_scan must be alone in its kernel")
    scan = scans[0]
    base, deltas = scan.operands[0], scan.operands[1:]
    shape, dtype, sizes = tuple(base.type.shape), base.type.dtype, builder.sizes
    n = sizes.numel(shape)
    o, j = Var(I64, "o"), Var(I64, "j")
    last = shape[-1] if shape else None
    looped = split_last and len(shape) >= 2 and isinstance(last, int) and last >= 8
    if looped:
        element = Idx(unravel(o, shape[:-1], sizes) + (j,), add(mul(o, const(last)), j))
        outer = sizes.numel(shape[:-1])
    else:
        element = Idx(unravel(o, shape, sizes), o)
        outer = n
    assert element.flat is not None
    stmts: list[Any] = [Let("s0", builder.value_at(base, element)), Store(output_names[0], element.flat, Var(dtype, "s0"))]
    used = [0] * len(deltas)
    for row, g in enumerate(scan.attrs["pattern"]):
        delta = builder.value_at(deltas[g], Idx((const(used[g]),) + element.dims, add(mul(const(used[g]), n), element.flat)))
        used[g] += 1
        stmts.append(Let(f"s{row + 1}", Call(dtype, "add", (Var(dtype, f"s{row}"), delta))))
        stmts.append(Store(output_names[0], add(mul(const(row + 1), n), element.flat), Var(dtype, f"s{row + 1}")))
    body = (Loop("j", const(last), tuple(stmts)),) if looped else tuple(stmts)
    buffers = _buffers(region.args, input_names, region.results, output_names, sizes)
    return Kernel("kernel", "pointwise", buffers, tuple(sizes.names), outer, body, const(last) if looped else None,
                  ("layer_scan",))


def _name(kernel: Kernel) -> Kernel:
    digest = hashlib.sha256(repr(kernel).encode()).hexdigest()[:10]
    label = "_".join(dict.fromkeys(n for n in kernel.source_ops if category(n).in_kernel))[:40]
    return replace(kernel, name=f"k_{label or 'copy'}_{digest}")
