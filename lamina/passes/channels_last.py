"""channels-last: a CNN's images in NHWC from convolution to convolution, as oneDNN runs them fastest.

Each NCHW ``conv2d`` becomes ``permute(conv2d{layout=nhwc}(permute(x, to NHWC)), to NCHW)``; small
depthwise convolutions and max pools become window sums over the NHWC image (``passes/windows.py``).
Then every permute back to NCHW sinks past the ops that read it: elementwise ops (their broadcast
per-channel operands reshaped to [1, 1, 1, C]), batch norm (as the same arithmetic on NHWC), pads,
slices, concatenations and reductions, until it meets the next convolution's permute to NHWC and
both cancel. What stays NCHW (a flatten, a pool torch runs) reads through one permute, which the
fuse pass folds into a kernel's indexing; an image the graph returns is copied to NCHW memory.

Graphs with fewer than ``MIN_CONVS`` convolutions (a ViT's patch embedding) are left as they are:
their one permute would buy nothing. On the project's CPU, torch's convolutions took 0.6-0.95x
their NCHW time channels-last at batch 8 (ResNet-50's 7x7 stem: 10.7 against 31.8 ms), and the
elementwise kernels between them read and write whole channel rows.
"""
from __future__ import annotations

from ..ir.builder import OpEmitter
from ..ir.core import Graph, Op, Value
from ..ir.opdef import Category
from ..ir.ops import REGISTRY
from .canonicalize import LAYOUT_RULES
from .rewrite import Rewriter, apply_rules, rule
from .windows import depthwise_window_sum, is_pointwise, is_small_depthwise, is_small_max_pool, max_window

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]  # nchw[d] = nhwc[TO_NCHW[d]]
MIN_CONVS = 2


def _to_nhwc(x: Value, op: Op, out: Rewriter) -> Value:
    return out.emit("permute", x, dims=TO_NHWC, loc=op.loc)


def _to_nchw(x: Value, op: Op, out: Rewriter) -> Value:
    return out.emit("permute", x, dims=TO_NCHW, loc=op.loc)


def _images(op: Op) -> bool:
    """A conv2d or pool over NCHW images larger than one pixel (a squeeze-excite conv on [N, C, 1, 1]
    is a matrix product in either layout)."""
    x = op.operands[0]
    return x.type.rank == 4 and tuple(x.type.shape[2:]) != (1, 1) and op.attrs.get("layout", "nchw") == "nchw"


@rule("conv2d")
def _conv_in_nhwc(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    if not _images(op):
        return None
    x = _to_nhwc(op.operands[0], op, out)
    if is_small_depthwise(op):
        return (_to_nchw(depthwise_window_sum(op, x, True, out), op, out),)
    if is_pointwise(op):
        return (_to_nchw(_pointwise_as_linear(op, x, out), op, out),)
    y = out.emit("conv2d", x, *op.operands[1:], loc=op.loc, **{**op.attrs, "layout": "nhwc"})
    return (_to_nchw(y, op, out),)


def _pointwise_as_linear(op: Op, x: Value, out: Rewriter) -> Value:
    """A 1x1 convolution over an NHWC image ``x`` is a linear layer over its pixels:
    ``[N*H*W, Cin] @ W[Cout, Cin]^T + b``, one GEMM with no copy on either side."""
    n, h, wd, cin = x.type.shape
    cout = op.operands[1].type.shape[0]
    pixels = out.emit("reshape", x, shape=[n * h * wd, cin], loc=op.loc)
    weight = out.emit("reshape", op.operands[1], shape=[cout, cin], loc=op.loc)
    y = out.emit("linear", pixels, weight, *op.operands[2:], loc=op.loc)
    return out.emit("reshape", y, shape=[n, h, wd, cout], loc=op.loc)


@rule("max_pool2d")
def _max_pool_in_nhwc(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    if not _images(op) or not is_small_max_pool(op):
        return None
    return (_to_nchw(max_window(op, _to_nhwc(op.operands[0], op, out), True, out), op, out),)


def _nhwc_source(v: Value, out: Rewriter) -> Value | None:
    """``x`` when ``v`` is ``permute(x, TO_NCHW)``: an NHWC image seen as NCHW."""
    src = out.producer(v)
    if src is None or src.name != "permute" or list(src.attrs["dims"]) != TO_NCHW:
        return None
    return src.operands[0]


def _as_nhwc(v: Value, op: Op, out: Rewriter) -> Value:
    """An operand broadcast against an NCHW image, as the same operand against its NHWC form: a reshape
    when it has at most the channel axis, or only axes whose order does not change; else a permute."""
    if (x := _nhwc_source(v, out)) is not None:
        return x
    shape = [1] * (4 - v.type.rank) + list(v.type.shape)
    if v.type.rank < 4:
        v = out.emit("reshape", v, shape=shape, loc=op.loc)
    moved = [d for d in TO_NHWC if shape[d] != 1]
    if moved == sorted(moved):
        return out.emit("reshape", v, shape=[shape[d] for d in TO_NHWC], loc=op.loc)
    return _to_nhwc(v, op, out)


@rule(*(name for name, opdef in REGISTRY.items() if opdef.category is Category.ELEMENTWISE))
def _elementwise_in_nhwc(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """f(permute(a), b) = permute(f(a, b')): b' is b against NHWC (a per-channel [1, C, 1, 1] becomes
    [1, 1, 1, C]); only when some operand is a whole NCHW-seen image, so every rewrite moves a permute
    down."""
    if op.regions or len(op.results) != 1 or op.result.type.rank != 4:
        return None
    if not any(_nhwc_source(v, out) is not None and v.type.shape == op.result.type.shape for v in op.operands):
        return None
    y = out.emit(op.name, *(_as_nhwc(v, op, out) for v in op.operands), loc=op.loc, **op.attrs)
    return (_to_nchw(y, op, out),)


@rule("batch_norm")
def _batch_norm_in_nhwc(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """Inference batch norm over an NHWC image: the batch_norm kernel's arithmetic, in its order, on
    per-channel operands shaped [1, 1, 1, C]."""
    x = _nhwc_source(op.operands[0], out)
    if x is None:
        return None
    c = x.type.shape[3]
    mean, var, *affine = (out.emit("reshape", v, shape=[1, 1, 1, c], loc=op.loc) for v in op.operands[1:])
    eps = out.emit("full", shape=[], value=float(op.attrs["eps"]), dtype=x.type.dtype, loc=op.loc)
    y = out.emit("div", out.emit("sub", x, mean, loc=op.loc),
                 out.emit("sqrt", out.emit("add", var, eps, loc=op.loc), loc=op.loc), loc=op.loc)
    for t, f in zip(affine, ("mul", "add")):
        y = out.emit(f, y, t, loc=op.loc)
    return (_to_nchw(y, op, out),)


@rule("pad")
def _pad_in_nhwc(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    x = _nhwc_source(op.operands[0], out)
    if x is None:
        return None
    low, high = [0] * 4, [0] * 4
    for d in range(4):
        low[TO_NCHW[d]], high[TO_NCHW[d]] = op.attrs["low"][d], op.attrs["high"][d]
    return (_to_nchw(out.emit("pad", x, loc=op.loc, **{**op.attrs, "low": low, "high": high}), op, out),)


@rule("slice")
def _slice_in_nhwc(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    x = _nhwc_source(op.operands[0], out)
    if x is None:
        return None
    dim = TO_NCHW[op.attrs["dim"] % 4]
    return (_to_nchw(out.emit("slice", x, loc=op.loc, **{**op.attrs, "dim": dim}), op, out),)


@rule("concat")
def _concat_in_nhwc(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    sources = [_nhwc_source(v, out) for v in op.operands]
    if any(x is None for x in sources):
        return None
    dim = TO_NCHW[op.attrs["dim"] % 4]
    return (_to_nchw(out.emit("concat", *sources, loc=op.loc, dim=dim), op, out),)


@rule(*(name for name, opdef in REGISTRY.items()
        if opdef.category is Category.REDUCTION and set(opdef.attrs) >= {"dims", "keepdim"}))
def _reduction_in_nhwc(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """A reduction over axes of an NCHW-seen image reduces the same axes of the NHWC one; the axes it
    keeps come out in NHWC order, permuted back where that order differs."""
    x = _nhwc_source(op.operands[0], out)
    dims = op.attrs["dims"]
    if x is None or len(op.results) != 1 or not dims:
        return None
    reduced = sorted(d % 4 for d in dims)
    if reduced == [2, 3] and op.name in ("sum", "mean") and x.type.dtype.is_float:
        return (_pooled(op, x, out),)
    y = out.emit(op.name, x, loc=op.loc, **{**op.attrs, "dims": [TO_NCHW[d] for d in reduced]})
    if op.attrs["keepdim"]:
        return (_to_nchw(y, op, out),)
    kept = [TO_NCHW[d] for d in range(4) if d not in reduced]  # NHWC axes, in the NCHW order of the result
    order = [sorted(kept).index(d) for d in kept]
    return (y if order == sorted(order) else out.emit("permute", y, dims=order, loc=op.loc),)


def _pooled(op: Op, x: Value, out: Rewriter) -> Value:
    """The sum or mean over the pixels of an NHWC image as a matrix product, ``ones[1, H*W] @ x[N, H*W, C]``
    (scaled by 1 / (H*W) for a mean), which reads whole channel rows: as a kernel row reduction its rows
    would stride over the channels (squeeze-excite's pooling; a fused kernel would run its producer in
    that strided loop too)."""
    n, h, w, c = x.type.shape
    weight = 1.0 / (h * w) if op.name == "mean" else 1.0
    ones = out.emit("full", shape=[1, h * w], value=weight, dtype=x.type.dtype, loc=op.loc)
    pixels = out.emit("reshape", x, shape=[n, h * w, c], loc=op.loc)
    pooled = out.emit("matmul", ones, pixels, loc=op.loc)  # [N, 1, C]
    return out.emit("reshape", pooled, shape=list(op.result.type.shape), loc=op.loc)


@rule("permute")
def _permute_of_ones_as_reshape(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """A permute that only moves axes of size 1 ([N, 1, 1, C] to [N, C, 1, 1]) is a reshape."""
    shape = op.operands[0].type.shape
    moved = [d for d in op.attrs["dims"] if shape[d] != 1]
    if moved != sorted(moved) or op.result.type.shape == shape:
        return None
    return (out.emit("reshape", op.operands[0], shape=list(op.result.type.shape), loc=op.loc),)


RULES = (_conv_in_nhwc, _max_pool_in_nhwc, _elementwise_in_nhwc, _batch_norm_in_nhwc, _pad_in_nhwc,
         _slice_in_nhwc, _concat_in_nhwc, _reduction_in_nhwc, _permute_of_ones_as_reshape, *LAYOUT_RULES)


def channels_last(graph: Graph) -> Graph:
    """Run a CNN's convolutions and the ops between them on NHWC images (graphs with at least two
    convolutions over images; others unchanged)."""
    convs = sum(1 for op in graph.walk() if op.name == "conv2d" and _images(op))
    if convs < MIN_CONVS:
        return graph
    return _dense_outputs(apply_rules(graph, RULES))


def _dense_outputs(graph: Graph) -> Graph:
    """An image the caller receives is NCHW in memory, as eager's is: a ``copy`` of the NHWC one seen
    through its permute (which fuse folds into the kernel that makes it)."""
    made = {id(v): op for op in graph.ops for v in op.results}
    out = OpEmitter()
    outputs = []
    for v in graph.outputs:
        op = made.get(id(v))
        nhwc = op is not None and op.name == "permute" and list(op.attrs["dims"]) == TO_NCHW
        outputs.append(out.emit("copy", v, loc=op.loc) if nhwc else v)
    if not out.ops:
        return graph
    return graph.replace(ops=graph.ops + tuple(out.ops), outputs=tuple(outputs))
