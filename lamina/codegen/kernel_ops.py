"""Kernel lowerings: each op's value at a multi-index, as a scalar expression (``KERNEL``).

Elementwise primitives need no entry (they print directly) and composites expand through
their scalar formulas (``OpDef.scalar``); every other op a kernel can compute — views,
constants, gathers, padding, reductions — is registered here, one function per op:
``lower(b, op, idx, k)`` gives result ``k`` of ``op`` at ``idx``, reading operands through
``b.value_at``.
"""
from __future__ import annotations

from ..ir.core import Op
from ..ir.dtypes import DType
from .kernel import I64, Call, Const, Expr, KernelCheck, add, const, mul
from .region_builder import KERNEL, Idx, KernelBuilder, Lowering, LoweringError, linearize, unravel


# ---- views and constants: index transforms ---------------------------------------------

@KERNEL.register("identity", "dropout")
def _same(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    return b.value_at(op.operands[0], idx)


@KERNEL.register("full")
def _full(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    return Const(op.results[0].type.dtype, op.attrs["value"])


@KERNEL.register("arange")
def _arange(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    at, dtype = op.attrs, op.results[0].type.dtype
    if dtype is I64:
        return add(mul(idx.dims[0], const(at["step"])), b.sizes(at["start"]))
    return Call(dtype, "cast", (add(mul(idx.dims[0], b.sizes(at["step"])), b.sizes(at["start"])),), (("dtype", dtype),))


@KERNEL.register("reshape")
def _reshape(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    src = op.operands[0]
    flat = idx.flat if idx.flat is not None else linearize(idx.dims, op.results[0].type.shape, b.sizes)
    return b.value_at(src, Idx(unravel(flat, src.type.shape, b.sizes), flat))


@KERNEL.register("permute")
def _permute(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    dims = [const(0)] * op.results[0].type.rank
    for i, p in enumerate(op.attrs["dims"]):
        dims[p] = idx.dims[i]
    return b.value_at(op.operands[0], Idx(tuple(dims)))


@KERNEL.register("expand")
def _expand(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    return b.value_at(op.operands[0], b.broadcast(idx, op.results[0].type.shape, op.operands[0].type.shape))


@KERNEL.register("slice")
def _slice(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    at = op.attrs
    d = at["dim"] % op.results[0].type.rank
    dims = list(idx.dims)
    dims[d] = add(b.sizes(at["start"]), mul(dims[d], const(at["step"])))
    return b.value_at(op.operands[0], Idx(tuple(dims)))


@KERNEL.register("split")
def _split(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    sizes = op.attrs["sizes"]
    d = op.attrs["dim"] % op.results[0].type.rank
    if not all(isinstance(s, int) for s in sizes[:k]):
        raise LoweringError(f"{op.describe()}: split with symbolic sizes inside a kernel")
    dims = list(idx.dims)
    dims[d] = add(dims[d], const(sum(sizes[:k])))
    return b.value_at(op.operands[0], Idx(tuple(dims)))


# ---- pointwise ops that read operands at other positions ---------------------------------

@KERNEL.register("embedding")
def _embedding(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    w, ids = op.operands
    row = b.checked_index(op, ids, b.value_at(ids, Idx(idx.dims[:-1])), w.type.shape[0], wrap=False)
    return b.value_at(w, Idx((row, idx.dims[-1])))


@KERNEL.register("index_select")
def _index_select(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    x, ids = op.operands
    d = op.attrs["dim"] % op.results[0].type.rank
    dims = list(idx.dims)
    dims[d] = b.checked_index(op, ids, b.value_at(ids, Idx((idx.dims[d],))), x.type.shape[d], wrap=False)
    return b.value_at(x, Idx(tuple(dims)))


@KERNEL.register("gather")
def _gather(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    x, ids = op.operands
    d = op.attrs["dim"] % op.results[0].type.rank
    dims = list(idx.dims)
    dims[d] = b.checked_index(op, ids, b.value_at(ids, idx), x.type.shape[d], wrap=False)
    return b.value_at(x, Idx(tuple(dims)))


@KERNEL.register("index")
def _index(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    """Advanced indexing: the picked dims come first when the indexed positions are not adjacent."""
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
            element = b.value_at(t, b.broadcast(picked_idx, picked_shape, t.type.shape))
            dims.append(b.checked_index(op, t, element, x.type.shape[axis], wrap=True))
        else:
            dims.append(next(rest))
    return b.value_at(x, Idx(tuple(dims)))


@KERNEL.register("pad")
def _pad(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    """The input where the position falls inside it (read at a clamped position), else the fill value."""
    x, dtype = op.operands[0], op.results[0].type.dtype
    dims, inside = [], None
    for i, d, lo, hi in zip(idx.dims, x.type.shape, op.attrs["low"], op.attrs["high"]):
        src = Call(I64, "sub", (i, const(lo))) if lo else i
        if lo > 0 or hi > 0:  # a padded side: positions outside the input read the fill value
            size = b.sizes(d)
            ok = Call(DType.bool, "logical_and", (Call(DType.bool, "ge", (src, const(0))),
                                                  Call(DType.bool, "lt", (src, size))))
            inside = ok if inside is None else Call(DType.bool, "logical_and", (inside, ok))
            src = Call(I64, "min", (Call(I64, "max", (src, const(0))), Call(I64, "sub", (size, const(1)))))
        dims.append(src)
    value = b.value_at(x, Idx(tuple(dims)))
    return value if inside is None else Call(dtype, "where", (inside, value, Const(dtype, op.attrs["value"])))


@KERNEL.register("slice_scatter")
def _slice_scatter(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    """``src`` on the slice's positions along dim, ``x`` elsewhere."""
    x, src = op.operands
    at, dtype = op.attrs, op.results[0].type.dtype
    d = at["dim"] % x.type.rank
    i, step = idx.dims[d], at["step"]
    rel = Call(I64, "sub", (i, b.sizes(at["start"])))
    count = b.sizes(src.type.shape[d])
    picked = Call(I64, "floordiv", (rel, const(step))) if step != 1 else rel
    hit = Call(DType.bool, "logical_and", (Call(DType.bool, "ge", (rel, const(0))),
                                           Call(DType.bool, "lt", (picked, count))))
    if step != 1:
        hit = Call(DType.bool, "logical_and", (hit, Call(DType.bool, "eq", (Call(I64, "mod", (rel, const(step))),
                                                                            const(0)))))
    dims = list(idx.dims)
    dims[d] = Call(I64, "min", (Call(I64, "max", (picked, const(0))), Call(I64, "sub", (count, const(1)))))
    return Call(dtype, "where", (hit, b.value_at(src, Idx(tuple(dims))), b.value_at(x, idx)))


@KERNEL.register("as_strided")
def _as_strided(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    x = op.operands[0]
    flat: Expr = const(op.attrs["offset"])
    for i, stride in zip(idx.dims, op.attrs["stride"]):
        flat = add(flat, mul(i, const(stride)))
    return b.value_at(x, Idx(unravel(flat, x.type.shape, b.sizes), flat))


@KERNEL.register("concat")
def _concat(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    d = op.attrs["dim"] % op.results[0].type.rank
    dtype = op.results[0].type.dtype
    pieces, offset = [], const(0)
    for x in op.operands:
        size = b.sizes(x.type.shape[d])
        dims = list(idx.dims)
        local = Call(I64, "sub", (dims[d], offset))
        dims[d] = Call(I64, "min", (Call(I64, "max", (local, const(0))), Call(I64, "sub", (size, const(1)))))
        pieces.append((add(offset, size), b.value_at(x, Idx(tuple(dims)))))
        offset = add(offset, size)
    out = pieces[-1][1]
    for end, value in reversed(pieces[:-1]):
        out = Call(dtype, "where", (Call(DType.bool, "lt", (idx.dims[d], end)), value, out))
    return out


def _triangle(keep_where: str) -> Lowering:
    """tril keeps col - row <= diagonal, triu keeps col - row >= diagonal; zero elsewhere."""
    def lower(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
        dtype = op.results[0].type.dtype
        diff = Call(I64, "sub", (idx.dims[-1], idx.dims[-2]))
        keep = Call(DType.bool, keep_where, (diff, const(op.attrs["diagonal"])))
        return Call(dtype, "where", (keep, b.value_at(op.operands[0], idx), Const(dtype, 0)))

    return lower


KERNEL.register("tril")(_triangle("le"))
KERNEL.register("triu")(_triangle("ge"))


@KERNEL.register("batch_norm")
def _batch_norm(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    x, mean, var, *affine = op.operands
    dt = x.type.dtype
    channel = Idx((idx.dims[1],))
    centered = Call(dt, "sub", (b.value_at(x, idx), b.value_at(mean, channel)))
    denom = Call(dt, "sqrt", (Call(dt, "add", (b.value_at(var, channel), Const(dt, op.attrs["eps"]))),))
    y = Call(dt, "div", (centered, denom))
    for t, f in zip(affine, ("mul", "add")):
        y = Call(dt, f, (y, b.value_at(t, channel)))
    return y


@KERNEL.register("floor_divide", "remainder", "fmod")
def _integer_division(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    """Floats divide as primitives; an integer zero divisor is an error, as in torch."""
    dtype = op.results[0].type.dtype
    if dtype.is_float:
        return b.elementwise(op, idx)
    args = tuple(b.operand(op, i, idx) for i in range(len(op.operands)))
    b.checks.append(KernelCheck("zero_division", op.describe()))
    return Call(dtype, f"int_{op.name}", args + (const(len(b.checks)),))


# ---- reductions: accumulators over the row's reduced axes --------------------------------

def _accumulated(kind: str) -> Lowering:
    """sum, amax, amin: one accumulator of ``kind`` over the row."""
    def lower(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
        at_r, _ = b.row(op, idx)
        return b.accumulate(kind, at_r)

    return lower


KERNEL.register("sum")(_accumulated("sum"))
KERNEL.register("amax")(_accumulated("max"))
KERNEL.register("amin")(_accumulated("min"))


@KERNEL.register("mean")
def _mean(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    at_r, count = b.row(op, idx)
    return Call(at_r.dtype, "div", (b.accumulate("sum", at_r), count))


@KERNEL.register("var")
def _var(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    at_r, count = b.row(op, idx)
    dt = at_r.dtype
    mean = Call(dt, "div", (b.accumulate("sum", at_r), count))
    dev = Call(dt, "sub", (at_r, mean))
    total = b.accumulate("sum", Call(dt, "mul", (dev, dev)))
    dof = Call(dt, "sub", (count, Const(dt, float(op.attrs["correction"]))))  # a fraction is allowed, as in torch
    return Call(dt, "div", (total, Call(dt, "maximum", (dof, Const(dt, 0.0)))))


def _softmax_parts(b: KernelBuilder, op: Op, idx: Idx) -> tuple[Expr, Expr]:
    """(x - max, sum(exp(x - max))) over the row."""
    at_r, _ = b.row(op, idx)
    dt = at_r.dtype
    peak = b.accumulate("max", at_r)
    total = b.accumulate("sum", Call(dt, "exp", (Call(dt, "sub", (at_r, peak)),)))
    return Call(dt, "sub", (b.value_at(op.operands[0], idx), peak)), total


@KERNEL.register("softmax")
def _softmax(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    shifted, total = _softmax_parts(b, op, idx)
    return Call(shifted.dtype, "div", (Call(shifted.dtype, "exp", (shifted,)), total))


@KERNEL.register("log_softmax")
def _log_softmax(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    shifted, total = _softmax_parts(b, op, idx)
    return Call(shifted.dtype, "sub", (shifted, Call(shifted.dtype, "log", (total,))))


@KERNEL.register("layer_norm")
def _layer_norm(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    at_r, count = b.row(op, idx)
    dt, eps = at_r.dtype, Const(at_r.dtype, op.attrs["eps"])
    mean = Call(dt, "div", (b.accumulate("sum", at_r), count))
    dev_r = Call(dt, "sub", (at_r, mean))
    var = Call(dt, "div", (b.accumulate("sum", Call(dt, "mul", (dev_r, dev_r))), count))
    centered = Call(dt, "sub", (b.value_at(op.operands[0], idx), mean))
    return _affine(b, op, idx, Call(dt, "div", (centered, Call(dt, "sqrt", (Call(dt, "add", (var, eps)),)))))


@KERNEL.register("rms_norm")
def _rms_norm(b: KernelBuilder, op: Op, idx: Idx, k: int) -> Expr:
    at_r, count = b.row(op, idx)
    dt, eps = at_r.dtype, Const(at_r.dtype, op.attrs["eps"])
    ms = Call(dt, "div", (b.accumulate("sum", Call(dt, "mul", (at_r, at_r))), count))
    at = b.value_at(op.operands[0], idx)
    return _affine(b, op, idx, Call(dt, "div", (at, Call(dt, "sqrt", (Call(dt, "add", (ms, eps)),)))))


def _affine(b: KernelBuilder, op: Op, idx: Idx, y: Expr) -> Expr:
    """y * weight + bias over the normalised trailing dims, for the operands given."""
    norm_ndim = op.attrs["normalized_ndim"]
    for t, f in zip(op.operands[1:], ("mul", "add")):
        y = Call(y.dtype, f, (y, b.value_at(t, Idx(idx.dims[len(idx.dims) - norm_ndim:]))))
    return y

