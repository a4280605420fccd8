"""Lower one ``fused`` region to a Kernel: every value becomes a scalar expression at an index.

``value_at(v, idx)`` builds the expression for value ``v`` at multi-index ``idx``: block
arguments become loads (views folded into the index), elementwise ops become ``Call``s,
reductions become accumulators computed once per row. Scheduling then binds every shared
sub-expression to a ``Let`` in the outermost loop it can live in.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import sympy

from ..ir.core import Op, Value
from ..ir.dtypes import DType
from ..ir.errors import LaminaError
from ..passes.fusion import op_class, reduction_axes
from .expand import expand
from .index_range import fits, index_range, nonnegative
from .kernel import (ERROR_BUFFER, I64, Buffer, Call, Const, Expr, IndexAssumption, Kernel, KernelCheck, Let, Load,
                     Loop, Reduce, Store, Var, add, const, floordiv, mod, mul, walk)


INTEGER_DIVISIONS = frozenset({"floor_divide", "remainder", "fmod"})


class LoweringError(LaminaError, NotImplementedError):
    """A region the kernel generator cannot express; names the op."""


@dataclass(frozen=True)
class Idx:
    """A multi-index; ``flat`` is its row-major offset in the value's own shape when known cheaply."""

    dims: tuple[Expr, ...]
    flat: Expr | None = None


class _Sizes:
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


def _unravel(flat: Expr, shape: Sequence[Any], sizes: _Sizes) -> tuple[Expr, ...]:
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


def _stride_of(shape: Sequence[Any], axis: int, sizes: _Sizes) -> Expr:
    stride: Expr = const(1)
    for d in shape[axis + 1:]:
        stride = mul(stride, sizes(d))
    return stride


def _linearize(idx: Sequence[Expr], shape: Sequence[Any], sizes: _Sizes) -> Expr:
    flat: Expr = const(0)
    for i, d in zip(idx, shape):
        flat = add(mul(flat, sizes(d)), i)
    return flat


class _Builder:
    def __init__(self, region_args: Sequence[Value], names: Sequence[str]) -> None:
        self.sizes = _Sizes()
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
            flat = idx.flat if idx.flat is not None else _linearize(idx.dims, shape, self.sizes)
            return Load(dtype, self.buffer_of[id(v)], flat)
        op, k = self.producer[id(v)]
        name, attrs = op.name, op.attrs
        if name in ("identity", "dropout"):
            return self.value_at(op.operands[0], idx)
        if name == "full":
            return Const(dtype, attrs["value"])
        if name == "arange":
            return Call(dtype, "cast", (add(mul(idx.dims[0], self.sizes(attrs["step"])), self.sizes(attrs["start"])),),
                        (("dtype", dtype),)) if dtype is not I64 else add(mul(idx.dims[0], const(attrs["step"])),
                                                                          self.sizes(attrs["start"]))
        if name == "reshape":
            src = op.operands[0]
            flat = idx.flat if idx.flat is not None else _linearize(idx.dims, shape, self.sizes)
            return self.value_at(src, Idx(_unravel(flat, src.type.shape, self.sizes), flat))
        if name == "permute":
            dims = [const(0)] * len(shape)
            for i, p in enumerate(attrs["dims"]):
                dims[p] = idx.dims[i]
            return self.value_at(op.operands[0], Idx(tuple(dims)))
        if name == "expand":
            return self.value_at(op.operands[0], self.broadcast(idx, shape, op.operands[0].type.shape))
        if name == "slice":
            d = attrs["dim"] % len(shape)
            dims = list(idx.dims)
            dims[d] = add(self.sizes(attrs["start"]), mul(dims[d], const(attrs["step"])))
            return self.value_at(op.operands[0], Idx(tuple(dims)))
        if name == "split":
            d = attrs["dim"] % len(shape)
            offset = sum(attrs["sizes"][:k]) if all(isinstance(s, int) for s in attrs["sizes"][:k]) else None
            if offset is None:
                raise LoweringError("split with symbolic sizes inside a kernel")
            dims = list(idx.dims)
            dims[d] = add(dims[d], const(offset))
            return self.value_at(op.operands[0], Idx(tuple(dims)))
        if op_class(name) == "reduction":
            return self.reduction(op, idx)
        return self.pointwise(op, idx)

    def broadcast(self, idx: Idx, out_shape: Sequence[Any], shape: Sequence[Any]) -> Idx:
        off = len(out_shape) - len(shape)
        dims = tuple(const(0) if s == 1 and out_shape[i + off] != 1 else idx.dims[i + off] for i, s in enumerate(shape))
        return Idx(dims, idx.flat if tuple(shape) == tuple(out_shape) else None)

    def operand(self, op: Op, i: int, idx: Idx) -> Expr:
        return self.value_at(op.operands[i], self.broadcast(idx, op.results[0].type.shape, op.operands[i].type.shape))

    def pointwise(self, op: Op, idx: Idx) -> Expr:
        name, attrs, dtype = op.name, op.attrs, op.results[0].type.dtype
        shape = op.results[0].type.shape
        if name == "embedding":
            w, ids = op.operands
            row = self.checked_index(op, ids, self.value_at(ids, Idx(idx.dims[:-1])), w.type.shape[0], wrap=False)
            return self.value_at(w, Idx((row, idx.dims[-1])))
        if name == "index_select":
            x, ids = op.operands
            d = attrs["dim"] % len(shape)
            dims = list(idx.dims)
            dims[d] = self.checked_index(op, ids, self.value_at(ids, Idx((idx.dims[d],))), x.type.shape[d], wrap=False)
            return self.value_at(x, Idx(tuple(dims)))
        if name == "gather":
            x, ids = op.operands
            d = attrs["dim"] % len(shape)
            dims = list(idx.dims)
            dims[d] = self.checked_index(op, ids, self.value_at(ids, idx), x.type.shape[d], wrap=False)
            return self.value_at(x, Idx(tuple(dims)))
        if name == "index":
            return self.advanced_index(op, idx)
        if name == "pad":
            return self.pad(op, idx)
        if name == "slice_scatter":
            return self.slice_scatter(op, idx)
        if name == "as_strided":
            x = op.operands[0]
            flat: Expr = const(op.attrs["offset"])
            for i, stride in zip(idx.dims, op.attrs["stride"]):
                flat = add(flat, mul(i, const(stride)))
            return self.value_at(x, Idx(_unravel(flat, x.type.shape, self.sizes), flat))
        if name == "concat":
            return self.concat(op, idx)
        if name in ("tril", "triu"):
            row, col = idx.dims[-2], idx.dims[-1]
            diff = Call(I64, "sub", (col, row))
            keep = Call(DType.bool, "le" if name == "tril" else "ge", (diff, const(attrs["diagonal"])))
            return Call(dtype, "where", (keep, self.value_at(op.operands[0], idx), Const(dtype, 0)))
        if name == "batch_norm":
            return self.batch_norm(op, idx)
        if op.regions or op_class(name) != "pointwise":
            raise LoweringError(f"{op.describe()} cannot be part of a generated kernel")
        args = tuple(self.operand(op, i, idx) for i in range(len(op.operands)))
        if name in INTEGER_DIVISIONS and not dtype.is_float:  # a zero divisor is an error, as in torch
            self.checks.append(KernelCheck("zero_division", op.describe()))
            return Call(dtype, f"int_{name}", args + (const(len(self.checks)),))
        items = tuple(sorted((k, v) for k, v in attrs.items()))
        return expand(Call(dtype, name, args, items))

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

    def advanced_index(self, op: Op, idx: Idx) -> Expr:
        x, tensors = op.operands[0], op.operands[1:]
        positions = [p % x.type.rank for p in op.attrs["positions"]]
        out_rank = op.results[0].type.rank
        picked = out_rank - (x.type.rank - len(positions))
        contiguous = positions == list(range(positions[0], positions[0] + len(positions)))
        start = positions[0] if contiguous else 0
        picked_idx = Idx(idx.dims[start:start + picked])
        picked_shape = op.results[0].type.shape[start:start + picked]
        rest = iter([d for i, d in enumerate(idx.dims) if not start <= i < start + picked])
        dims = []
        for axis in range(x.type.rank):
            if axis in positions:
                t = tensors[positions.index(axis)]
                element = self.value_at(t, self.broadcast(picked_idx, picked_shape, t.type.shape))
                dims.append(self.checked_index(op, t, element, x.type.shape[axis], wrap=True))
            else:
                dims.append(next(rest))
        return self.value_at(x, Idx(tuple(dims)))

    def pad(self, op: Op, idx: Idx) -> Expr:
        """The input where the position falls inside it (read at a clamped position), else the fill value."""
        x, dtype = op.operands[0], op.results[0].type.dtype
        dims, inside = [], None
        for i, d, lo, hi in zip(idx.dims, x.type.shape, op.attrs["low"], op.attrs["high"]):
            src = Call(I64, "sub", (i, const(lo))) if lo else i
            if lo > 0 or hi > 0:  # a padded side: positions outside the input read the fill value
                size = self.sizes(d)
                ok = Call(DType.bool, "logical_and", (Call(DType.bool, "ge", (src, const(0))),
                                                      Call(DType.bool, "lt", (src, size))))
                inside = ok if inside is None else Call(DType.bool, "logical_and", (inside, ok))
                src = Call(I64, "min", (Call(I64, "max", (src, const(0))), Call(I64, "sub", (size, const(1)))))
            dims.append(src)
        value = self.value_at(x, Idx(tuple(dims)))
        return value if inside is None else Call(dtype, "where", (inside, value, Const(dtype, op.attrs["value"])))

    def slice_scatter(self, op: Op, idx: Idx) -> Expr:
        """``src`` on the slice's positions along dim, ``x`` elsewhere."""
        x, src = op.operands
        at, dtype = op.attrs, op.results[0].type.dtype
        d = at["dim"] % x.type.rank
        i, step = idx.dims[d], at["step"]
        rel = Call(I64, "sub", (i, self.sizes(at["start"])))
        count = self.sizes(src.type.shape[d])
        picked = Call(I64, "floordiv", (rel, const(step))) if step != 1 else rel
        hit = Call(DType.bool, "logical_and", (Call(DType.bool, "ge", (rel, const(0))),
                                               Call(DType.bool, "lt", (picked, count))))
        if step != 1:
            hit = Call(DType.bool, "logical_and", (hit, Call(DType.bool, "eq", (Call(I64, "mod", (rel, const(step))),
                                                                                const(0)))))
        dims = list(idx.dims)
        dims[d] = Call(I64, "min", (Call(I64, "max", (picked, const(0))), Call(I64, "sub", (count, const(1)))))
        return Call(dtype, "where", (hit, self.value_at(src, Idx(tuple(dims))), self.value_at(x, idx)))

    def concat(self, op: Op, idx: Idx) -> Expr:
        d = op.attrs["dim"] % op.results[0].type.rank
        dtype = op.results[0].type.dtype
        pieces, offset = [], const(0)
        for x in op.operands:
            size = self.sizes(x.type.shape[d])
            dims = list(idx.dims)
            local = Call(I64, "sub", (dims[d], offset))
            dims[d] = Call(I64, "min", (Call(I64, "max", (local, const(0))), Call(I64, "sub", (size, const(1)))))
            pieces.append((add(offset, size), self.value_at(x, Idx(tuple(dims)))))
            offset = add(offset, size)
        out = pieces[-1][1]
        for end, value in reversed(pieces[:-1]):
            out = Call(dtype, "where", (Call(DType.bool, "lt", (idx.dims[d], end)), value, out))
        return out

    def batch_norm(self, op: Op, idx: Idx) -> Expr:
        x, mean, var, *affine = op.operands
        dt = x.type.dtype
        channel = Idx((idx.dims[1],))
        centered = Call(dt, "sub", (self.value_at(x, idx), self.value_at(mean, channel)))
        denom = Call(dt, "sqrt", (Call(dt, "add", (self.value_at(var, channel), Const(dt, op.attrs["eps"]))),))
        y = Call(dt, "div", (centered, denom))
        for t, f in zip(affine, ("mul", "add")):
            y = Call(dt, f, (y, self.value_at(t, channel)))
        return y

    # -- reductions -----------------------------------------------------------------------------
    def accumulate(self, kind: str, value_in_r: Expr) -> Expr:
        for acc, k, dt, v in self.reductions:
            if k == kind and v == value_in_r:
                return Var(dt, acc)
        acc = f"acc{len(self.reductions)}"
        self.reductions.append((acc, kind, value_in_r.dtype, value_in_r))
        return Var(value_in_r.dtype, acc)

    def reduction(self, op: Op, idx: Idx) -> Expr:
        if self.row_index is None:
            raise LoweringError(f"{op.describe()} outside a row kernel")
        full = len(idx.dims) == op.operands[0].type.rank
        outer = tuple(d for i, d in enumerate(idx.dims) if i not in self.row_axes) if full else idx.dims
        if outer != self.row_outer:  # fusion keeps such reads out of the row's kernel (passes/fusion.py)
            raise LoweringError(f"internal: {op.describe()} is read at another row than the kernel's; "
                                "a fusion bug, please report it")
        x = op.operands[0]
        dt = x.type.dtype
        axes = reduction_axes(op)
        n = self.sizes.numel([x.type.shape[a] for a in axes])
        count = Call(dt, "cast", (n,), (("dtype", dt),))
        at_r = self.value_at(x, self.row_index(Var(I64, "r")))
        name, attrs = op.name, op.attrs
        if name == "sum":
            return self.accumulate("sum", at_r)
        if name in ("amax", "amin"):
            return self.accumulate("max" if name == "amax" else "min", at_r)
        if name == "mean":
            return Call(dt, "div", (self.accumulate("sum", at_r), count))
        if name == "var":
            mean = Call(dt, "div", (self.accumulate("sum", at_r), count))
            dev = Call(dt, "sub", (at_r, mean))
            total = self.accumulate("sum", Call(dt, "mul", (dev, dev)))
            dof = Call(dt, "sub", (count, Const(dt, float(attrs["correction"]))))  # a fraction is allowed, as in torch
            denom = Call(dt, "maximum", (dof, Const(dt, 0.0)))
            return Call(dt, "div", (total, denom))
        at = self.value_at(x, idx)
        if name in ("softmax", "log_softmax"):
            peak = self.accumulate("max", at_r)
            total = self.accumulate("sum", Call(dt, "exp", (Call(dt, "sub", (at_r, peak)),)))
            shifted = Call(dt, "sub", (at, peak))
            if name == "softmax":
                return Call(dt, "div", (Call(dt, "exp", (shifted,)), total))
            return Call(dt, "sub", (shifted, Call(dt, "log", (total,))))
        if name == "layer_norm":
            mean = Call(dt, "div", (self.accumulate("sum", at_r), count))
            dev_r = Call(dt, "sub", (at_r, mean))
            var = Call(dt, "div", (self.accumulate("sum", Call(dt, "mul", (dev_r, dev_r))), count))
            y = Call(dt, "div", (Call(dt, "sub", (at, mean)),
                                 Call(dt, "sqrt", (Call(dt, "add", (var, Const(dt, attrs["eps"]))),))))
        elif name == "rms_norm":
            ms = Call(dt, "div", (self.accumulate("sum", Call(dt, "mul", (at_r, at_r))), count))
            y = Call(dt, "div", (at, Call(dt, "sqrt", (Call(dt, "add", (ms, Const(dt, attrs["eps"]))),))))
        else:
            raise LoweringError(f"{op.describe()} has no kernel lowering")
        norm_ndim = attrs["normalized_ndim"]
        for t, f in zip(op.operands[1:], ("mul", "add")):
            y = Call(dt, f, (y, self.value_at(t, Idx(idx.dims[len(idx.dims) - norm_ndim:]))))
        return y


class _Scheduler:
    """Binds sub-expressions to Lets in the outermost scope where their loop variables exist."""

    def __init__(self) -> None:
        self.count = 0
        self.row: list[Any] = []
        self.row_memo: dict[Expr, Expr] = {}

    @staticmethod
    def level(expr: Expr) -> str:
        names = {e.name for e in walk(expr) if isinstance(e, Var)}
        return "r" if "r" in names else "j" if "j" in names else "row"

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


def lower_region(op: Op, input_names: Sequence[str], output_names: Sequence[str], split_last: bool = False) -> Kernel:
    """The Kernel computing ``op``'s (a ``fused`` op) results from its operands.

    ``split_last`` (CPU): a pointwise kernel over a shape whose last dim is static and >= 8 loops over
    the rows in parallel and the last dim serially, so broadcast loads along it (a bias) are contiguous
    and the row index arithmetic is hoisted out of the inner loop.
    """
    region = op.regions[0]
    builder = _Builder(region.args, input_names)
    for inner in region.ops:
        for k, v in enumerate(inner.results):
            builder.producer[id(v)] = (inner, k)
    scans = [o for o in region.ops if o.name == "layer_scan"]
    if scans:
        return _name(_scan_kernel(op, scans, builder, input_names, output_names, split_last))
    reductions = [o for o in region.ops if op_class(o.name) == "reduction"]
    sizes = builder.sizes
    o = Var(I64, "o")
    if reductions:
        first = reductions[0]
        row_shape = tuple(first.operands[0].type.shape)
        axes = reduction_axes(first)
        outer_shape = [d for i, d in enumerate(row_shape) if i not in axes]
        inner_shape = [d for i, d in enumerate(row_shape) if i in axes]
        inner_n = sizes.numel(inner_shape)
        trailing = axes == tuple(range(len(row_shape) - len(axes), len(row_shape)))
        outer_dims = _unravel(o, outer_shape, sizes)

        def row_index(var: Expr) -> Idx:
            inner_dims = iter(_unravel(var, inner_shape, sizes))
            outer = iter(outer_dims)
            dims = tuple(next(inner_dims) if i in axes else next(outer) for i in range(len(row_shape)))
            return Idx(dims, add(mul(o, inner_n), var) if trailing else None)

        builder.row_index = row_index
        builder.row_outer, builder.row_axes = tuple(outer_dims), axes
        element_idx = row_index(Var(I64, "j"))
        outer_n = sizes.numel(outer_shape)
    else:
        row_shape = tuple(region.results[0].type.shape)
        last = row_shape[-1] if row_shape else None
        inner_n = None
        if split_last and len(row_shape) >= 2 and isinstance(last, int) and last >= 8:
            j = Var(I64, "j")
            inner_n = const(last)
            element_idx = Idx(_unravel(o, row_shape[:-1], sizes) + (j,), add(mul(o, inner_n), j))
            outer_n = sizes.numel(row_shape[:-1])
        else:
            element_idx = Idx(_unravel(o, row_shape, sizes), o)
            outer_n = sizes.numel(row_shape)
    reduced = set()
    if reductions:
        reduced = {tuple(1 if i in axes else d for i, d in enumerate(row_shape)),
                   tuple(d for i, d in enumerate(row_shape) if i not in axes)}
    stores_row, stores_elem = [], []
    for v, name in zip(region.results, output_names):
        shape = tuple(v.type.shape)
        if reductions and shape != row_shape and shape in reduced:
            row_idx = Idx(tuple(_unravel(o, shape, sizes)), o)
            stores_row.append((name, o, builder.value_at(v, row_idx)))
        elif shape == row_shape:
            flat = element_idx.flat if element_idx.flat is not None else _linearize(element_idx.dims, shape, sizes)
            stores_elem.append((name, flat, builder.value_at(v, element_idx)))
        else:
            raise LoweringError(f"{op.describe()}: result of shape {list(shape)} does not fit the kernel's "
                                f"iteration space {list(row_shape)}")
    sched = _Scheduler()
    body: list[Any] = sched.row
    for acc, kind, dtype, value in builder.reductions:
        inner: list[Any] = []
        bound = sched.bind(value, inner, {}, "r")
        body.append(Reduce(acc, kind, dtype, "r", inner_n, tuple(inner), bound))
    for name, index, value in stores_row:
        body.append(Store(name, sched.bind(index, body, sched.row_memo, "row"),
                          sched.bind(value, body, sched.row_memo, "row")))
    if stores_elem:
        loop_body: list[Any] = []
        memo: dict[Expr, Expr] = {}
        looped = inner_n is not None
        level = "j" if looped else "row"
        target = loop_body if looped else body
        target_memo = memo if looped else sched.row_memo
        stores = [Store(n, sched.bind(i, target, target_memo, level), sched.bind(v, target, target_memo, level))
                  for n, i, v in stores_elem]
        target.extend(stores)
        if looped:
            body.append(Loop("j", inner_n, tuple(loop_body)))
    buffers = _buffers(region.args, input_names, region.results, output_names, sizes)
    if builder.checks:
        buffers += (Buffer(ERROR_BUFFER, I64, const(3), output=True),)
    kernel = Kernel("kernel", "row" if reductions else "pointwise", buffers, tuple(sizes.names), outer_n,
                    tuple(body), inner_n, tuple(o.name for o in region.ops if o.name != "yield"),
                    checks=tuple(builder.checks), assumptions=tuple(builder.assumptions))
    return _name(kernel)


def _buffers(region_args: Sequence[Value], input_names: Sequence[str], results: Sequence[Value],
             output_names: Sequence[str], sizes: _Sizes) -> tuple[Buffer, ...]:
    return tuple(Buffer(n, a.type.dtype, sizes.numel(a.type.shape)) for n, a in zip(input_names, region_args)) + \
        tuple(Buffer(n, v.type.dtype, sizes.numel(v.type.shape), output=True) for n, v in zip(output_names, results))


def _scan_kernel(op: Op, scans: Sequence[Op], builder: _Builder, input_names: Sequence[str],
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
        element = Idx(_unravel(o, shape[:-1], sizes) + (j,), add(mul(o, const(last)), j))
        outer = sizes.numel(shape[:-1])
    else:
        element = Idx(_unravel(o, shape, sizes), o)
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
    label = "_".join(dict.fromkeys(n for n in kernel.source_ops if op_class(n) in ("pointwise", "reduction", "scan")))[:40]
    return replace(kernel, name=f"k_{label or 'copy'}_{digest}")
