"""Small windows as elementwise ops: a depthwise convolution or max pool of up to 3x3 taps written as
shifted, strided slices of its (padded) input, in either image layout (NCHW, or NHWC for channels_last).
Elementwise ops fuse with what feeds and reads them, so the window runs inside its neighbours' kernel."""
from __future__ import annotations

import math

from ..ir.core import Op, Value
from ..ir.ops.window import pair, pool_geometry
from .rewrite import Rewriter

MAX_WINDOW_TERMS = 9  # a window of up to 3x3 taps: its sum (or max) stays one kernel (fuse's MAX_OPS)


def window_geometry(op: Op) -> tuple[tuple[int, int], ...]:
    """(stride, padding, dilation) of a convolution or pool (a pool's stride defaults to its kernel)."""
    stride = op.attrs["stride"] or op.attrs["kernel"]
    return pair("stride", stride), pair("padding", op.attrs["padding"]), pair("dilation", op.attrs.get("dilation", [1]))


def static_window(op: Op, kernel: tuple[int, int]) -> bool:
    """Whether ``op``'s window is small enough to unroll, over static spatial sizes."""
    spatial = op.operands[0].type.shape[2:]  # the op's own input is NCHW
    return kernel[0] * kernel[1] <= MAX_WINDOW_TERMS and all(isinstance(d, int) for d in (*spatial, *kernel))


def _taps(x: Value, op: Op, kernel: tuple[int, int], pad_high: tuple[int, int], fill: float, last: bool,
          out: Rewriter) -> list[tuple[int, int, Value]]:
    """Each tap (i, j) of ``op``'s window with the slice of ``x`` (NHWC when ``last``, padded with ``fill``:
    ``padding`` low, ``pad_high`` high) that the tap reads for every output element: shifted by the tap,
    strided by the window's stride."""
    (sh, sw), (ph, pw), (dh, dw) = window_geometry(op)
    _, _, oh, ow = op.result.type.shape  # the op's own result is NCHW
    rows_dim, cols_dim = (1, 2) if last else (2, 3)
    if ph or pw or any(pad_high):
        low, high = [0, 0, 0, 0], [0, 0, 0, 0]
        low[rows_dim], low[cols_dim], high[rows_dim], high[cols_dim] = ph, pw, *pad_high
        x = out.emit("pad", x, low=low, high=high, value=fill, loc=op.loc)
    taps = []
    for i in range(kernel[0]):
        rows = out.emit("slice", x, dim=rows_dim, start=i * dh, end=i * dh + (oh - 1) * sh + 1, step=sh, loc=op.loc)
        for j in range(kernel[1]):
            taps.append((i, j, out.emit("slice", rows, dim=cols_dim, start=j * dw, end=j * dw + (ow - 1) * sw + 1,
                                        step=sw, loc=op.loc)))
    return taps


def _per_channel(v: Value, c: int, last: bool, op: Op, out: Rewriter) -> Value:
    """A [c] (or [c, 1, 1]) vector shaped to broadcast over the channels of an NCHW or NHWC image."""
    return out.emit("reshape", v, shape=[1, 1, 1, c] if last else [1, c, 1, 1], loc=op.loc)


def is_pointwise(op: Op) -> bool:
    """A 1x1 conv2d with stride 1, no padding and one group: a matrix product over channels."""
    ones = all(pair(k, op.attrs[k]) == (1, 1) for k in ("stride", "dilation"))
    return (ones and pair("padding", op.attrs["padding"]) == (0, 0) and op.attrs["groups"] == 1
            and tuple(op.operands[1].type.shape[2:]) == (1, 1))


def is_small_depthwise(op: Op) -> bool:
    """A conv2d with one filter per channel and a window of up to 3x3 taps."""
    x, w = op.operands[0], op.operands[1]
    c = x.type.shape[1]
    kernel = tuple(w.type.shape[2:])
    return (op.attrs["layout"] == "nchw" and op.attrs["groups"] == c and w.type.shape[0] == c
            and w.type.shape[1] == 1 and static_window(op, kernel))


def depthwise_window_sum(op: Op, x: Value, last: bool, out: Rewriter) -> Value:
    """``op`` (a small depthwise NCHW convolution) as a sum of shifted slices of ``x`` (its input, NHWC
    when ``last``) times each tap's per-channel weight; the result is in ``x``'s layout."""
    w = op.operands[1]
    c, kernel = w.type.shape[0], tuple(w.type.shape[2:])
    ph, pw = pair("padding", op.attrs["padding"])
    if last:  # [kh, kw, 1, c], copied once per plan: each tap's weights a dense row, as the channel loop reads
        w = out.emit("copy", out.emit("permute", w, dims=[2, 3, 1, 0], loc=op.loc), loc=op.loc)
    rows_dim, cols_dim = (0, 1) if last else (2, 3)
    total = None
    for i, j, window in _taps(x, op, kernel, (ph, pw), 0.0, last, out):
        tap = out.emit("slice", out.emit("slice", w, dim=rows_dim, start=i, end=i + 1, step=1, loc=op.loc),
                       dim=cols_dim, start=j, end=j + 1, step=1, loc=op.loc)
        term = out.emit("mul", window, _per_channel(tap, c, last, op, out), loc=op.loc)
        total = term if total is None else out.emit("add", total, term, loc=op.loc)
    if len(op.operands) == 3:
        total = out.emit("add", total, _per_channel(op.operands[2], c, last, op, out), loc=op.loc)
    return total


def is_small_max_pool(op: Op) -> bool:
    """A float max pool of up to 3x3 taps."""
    return op.operands[0].type.dtype.is_float and static_window(op, pair("kernel", op.attrs["kernel"]))


def max_window(op: Op, x: Value, last: bool, out: Rewriter) -> Value:
    """``op`` (a small NCHW max pool) as a NaN-propagating maximum of shifted slices of ``x`` (its input,
    NHWC when ``last``) padded with -inf, as torch's own max pool computes it."""
    kernel = pair("kernel", op.attrs["kernel"])
    # ceil_mode's last window may run past the high padding: pad that far too (it never starts there)
    _, _, _, (ph, pw), _, (eh, ew) = pool_geometry(op.operands[0].type, op.attrs)
    result = None
    for _, _, window in _taps(x, op, kernel, (ph + eh, pw + ew), -math.inf, last, out):
        result = window if result is None else out.emit("maximum", result, window, loc=op.loc)
    return result
