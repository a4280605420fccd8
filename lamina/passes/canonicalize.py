"""canonicalize: dead code, common subexpressions, constant folding, trivial layout/cast removal, attention
masks the graph fixes (``fixed_masks.py``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..ir.core import Graph, Op, Value
from ..ir.opdef import Category
from ..ir.ops import REGISTRY
from .fixed_masks import fixed_mask_rule
from .rewrite import Rewriter, apply_rules, rule
from .windows import depthwise_window_sum, is_pointwise, is_small_depthwise, is_small_max_pool, max_window


def _same(op: Op, x: Value) -> bool:
    return x.type == op.result.type


@rule("identity", "dropout")
def _drop_identity(op: Op, out: Rewriter) -> tuple[Value, ...]:
    return (op.operands[0],)


@rule("cast", "reshape", "expand")
def _drop_noop_layout(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    return (op.operands[0],) if _same(op, op.operands[0]) else None


@rule("permute")
def _drop_identity_permute(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    return (op.operands[0],) if list(op.attrs["dims"]) == list(range(len(op.attrs["dims"]))) else None


@rule("slice")
def _drop_full_slice(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    a = op.attrs
    return (op.operands[0],) if a["start"] == 0 and a["step"] == 1 and _same(op, op.operands[0]) else None


@rule("concat")
def _drop_single_concat(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    return (op.operands[0],) if len(op.operands) == 1 else None


@rule("reshape")
def _merge_reshapes(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    src = out.producer(op.operands[0])
    if src is None or src.name != "reshape":
        return None
    return (out.emit("reshape", src.operands[0], loc=op.loc, shape=list(op.result.type.shape)),)


@rule("permute")
def _merge_permutes(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    src = out.producer(op.operands[0])
    if src is None or src.name != "permute":
        return None
    inner, outer = src.attrs["dims"], op.attrs["dims"]
    return (out.emit("permute", src.operands[0], loc=op.loc, dims=[inner[d] for d in outer]),)


@rule()
def _fold_constants(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """An elementwise op of ``full`` operands is itself a ``full``."""
    opdef = REGISTRY[op.name]
    if opdef.category is not Category.ELEMENTWISE or op.regions or not op.operands or len(op.results) != 1:
        return None
    sources = [out.producer(v) for v in op.operands]
    if any(s is None or s.name != "full" for s in sources):
        return None
    scalars = [np.full((), s.attrs["value"], dtype=s.attrs["dtype"].numpy) for s in sources]
    with np.errstate(all="ignore"):
        value = np.asarray(opdef.reference(scalars, dict(op.attrs))).astype(op.result.type.dtype.numpy)
    dtype = op.result.type.dtype
    folded = value.item()
    if dtype.is_float:
        folded = float(folded)
    return (out.emit("full", loc=op.loc, shape=list(op.result.type.shape), value=folded, dtype=dtype),)


@rule(*(name for name, opdef in REGISTRY.items() if opdef.neutral is not None))
def _drop_neutral(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """x + 0, x - 0, x * 1, x / 1 -> x (``OpDef.neutral``), when that changes neither shape nor dtype."""
    neutral = REGISTRY[op.name].neutral
    assert neutral is not None
    for keep, other in ((0, 1), (1, 0)) if neutral.commutes else ((0, 1),):
        value = _full_value(out.producer(op.operands[other]))
        if value is not None and value == neutral.value and _same(op, op.operands[keep]):
            return (op.operands[keep],)
    return None


@rule("attention")
def _gqa_instead_of_repeated_heads(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """Attention over keys and values whose heads were repeated for grouped-query attention
    (transformers' ``repeat_kv``: reshape to [b, hk, 1, s, d], expand to [b, hk, r, s, d], reshape to
    [b, hk*r, s, d], which copies) reads the hk heads themselves with ``gqa=true``: query head i uses
    key head i // r either way, and nothing is copied."""
    if op.attrs["gqa"]:
        return None
    keys, repeats = _repeated_heads(op.operands[1], out)
    values, value_repeats = _repeated_heads(op.operands[2], out)
    if keys is None or values is None or repeats != value_repeats:
        return None
    return (out.emit("attention", op.operands[0], keys, values, *op.operands[3:], loc=op.loc,
                     **{**op.attrs, "gqa": True}),)


def _repeated_heads(value: Value, out: Rewriter) -> tuple[Value | None, Any]:
    """(x, r) when ``value`` is x [b, hk, s, d] with each head repeated r times as ``repeat_kv`` does."""
    outer = out.producer(value)
    expand = out.producer(outer.operands[0]) if outer is not None and outer.name == "reshape" else None
    inner = out.producer(expand.operands[0]) if expand is not None and expand.name == "expand" else None
    if inner is None or inner.name != "reshape" or inner.operands[0].type.rank != 4:
        return None, 0
    source = inner.operands[0]
    b, hk, s, d = source.type.shape
    repeated = expand.result.type.shape
    if tuple(inner.result.type.shape) != (b, hk, 1, s, d) or len(repeated) != 5 \
            or tuple(repeated[:2]) != (b, hk) or tuple(repeated[3:]) != (s, d):
        return None, 0
    if tuple(value.type.shape) != (b, hk * repeated[2], s, d):
        return None, 0
    return source, repeated[2]


@rule("conv2d")
def _pointwise_conv_as_matmul(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """A 1x1 convolution (stride 1, no padding, one group) is a matrix product over channels:
    ``W[Cout, Cin] @ x[N, Cin, H*W]``, no copy on either side. oneDNN runs such convolutions on NCHW
    tensors 1.6-17x slower than the GEMM on the project's CPU (MobileNetV2's 16->96 expansion at
    112x112: 4.2 ms against 0.25). Over one pixel (squeeze-excite's [N, C, 1, 1]) it is a ``linear``
    over [N, Cin]: one pass over the weight for the whole batch, where the matrix product would read
    it once per image (RegNet's 44 squeeze-excite convolutions at batch 8: 13 ms)."""
    x, w = op.operands[0], op.operands[1]
    if not is_pointwise(op) or op.attrs["layout"] != "nchw":
        return None
    n, cin, h, wd = x.type.shape
    cout = w.type.shape[0]
    if h * wd == 1:
        rows = out.emit("linear", out.emit("reshape", x, shape=[n, cin], loc=op.loc),
                        out.emit("reshape", w, shape=[cout, cin], loc=op.loc), *op.operands[2:], loc=op.loc)
        return (out.emit("reshape", rows, shape=[n, cout, 1, 1], loc=op.loc),)
    product = out.emit("matmul", out.emit("reshape", w, shape=[cout, cin], loc=op.loc),
                       out.emit("reshape", x, shape=[n, cin, h * wd], loc=op.loc), loc=op.loc)
    y = out.emit("reshape", product, shape=[n, cout, h, wd], loc=op.loc)
    if len(op.operands) == 3:
        y = out.emit("add", y, out.emit("reshape", op.operands[2], shape=[1, cout, 1, 1], loc=op.loc), loc=op.loc)
    return (y,)


@rule("conv2d")
def _depthwise_conv_as_window_sum(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """A depthwise convolution (one filter per channel) of up to 3x3 taps is a sum of shifted, strided
    slices of the (padded) input, each times its tap's per-channel weight: elementwise ops, so it fuses
    with what reads and feeds it (MobileNet's batch norm and ReLU6) into one kernel that reads the
    input once. oneDNN's NCHW depthwise convolution is the slowest op of MobileNetV2 on the project's
    CPU (96 channels at 112x112: 1.9 ms)."""
    return (depthwise_window_sum(op, op.operands[0], False, out),) if is_small_depthwise(op) else None


@rule("max_pool2d")
def _max_pool_as_window_max(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
    """A float max pool of up to 3x3 taps is a NaN-propagating maximum of shifted, strided slices of the
    input padded with -inf: elementwise ops that fuse with the batch norm and ReLU before it. torch's
    NCHW max pool of ResNet's stem (64 channels at 112x112, batch 8) took 28 ms on the project's CPU,
    7% of the model."""
    return (max_window(op, op.operands[0], False, out),) if is_small_max_pool(op) else None


# the rules that undo layout changes: other passes that move permutes and reshapes run them too
LAYOUT_RULES = (_drop_identity_permute, _merge_permutes, _drop_noop_layout, _merge_reshapes)


def _full_value(op: Op | None) -> Any:
    """The fill value when ``op`` is a ``full``, else None."""
    return op.attrs["value"] if op is not None and op.name == "full" else None


RULES = (_drop_identity, _drop_noop_layout, _drop_identity_permute, _drop_full_slice, _drop_single_concat,
         _merge_reshapes, _merge_permutes, _fold_constants, _drop_neutral, _gqa_instead_of_repeated_heads,
         _pointwise_conv_as_matmul, _depthwise_conv_as_window_sum, _max_pool_as_window_max)


def canonicalize(graph: Graph) -> Graph:
    """Simplify ``graph`` to a fixed point without changing what it computes."""
    return apply_rules(graph, (*RULES, fixed_mask_rule()))
