"""Sliding-window ops over NCHW images: conv2d (also NHWC), max/avg pooling, and inference batch_norm."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..opdef import AttrSpec, InferenceError, Category, OpDef, need_float, need_rank, same_dtype
from ..types import TensorType


def pair(name: str, value: Sequence[int]) -> tuple[int, int]:
    """A window attribute as (height, width): torch writes one value for both as ``[k]``."""
    if len(value) == 1:
        return value[0], value[0]
    if len(value) != 2:
        raise InferenceError(f"{name} expects 1 or 2 values, got {list(value)}")
    return value[0], value[1]


def _out_size(size: Any, kernel: int, stride: int, pad: int, dilation: int, name: str, ceil: bool = False) -> int:
    """torch's output size; with ``ceil`` a last partial window counts if it starts inside the input
    or its left padding."""
    if not isinstance(size, int):
        raise InferenceError(f"{name} needs static spatial dims, got {size}")
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    if out < 1:
        raise InferenceError(f"{name}: window {kernel} does not fit input size {size} with padding {pad}")
    return out


LAYOUTS = ("nchw", "nhwc")  # conv2d's image layouts: channels second, or last (``layout=nhwc``)


def _conv_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, w = types[0], types[1]
    same_dtype("conv2d", types)
    need_float("conv2d", x)
    need_rank("conv2d", x, 4)
    need_rank("conv2d", w, 4)
    if attrs["layout"] not in LAYOUTS:
        raise InferenceError(f"conv2d: layout must be one of {', '.join(LAYOUTS)}, got {attrs['layout']!r}")
    last = attrs["layout"] == "nhwc"
    n, c, h_in, w_in = (x.shape[0], x.shape[3], x.shape[1], x.shape[2]) if last else x.shape
    groups = attrs["groups"]
    if c != w.shape[1] * groups or w.shape[0] % groups:
        raise InferenceError(f"conv2d: input {x} and weight {w} disagree on channels with groups={groups}")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        raise InferenceError(f"conv2d: bias {types[2]} should be [{w.shape[0]}]")
    (sh, sw), (ph, pw), (dh, dw) = (pair("conv2d " + k, attrs[k]) for k in ("stride", "padding", "dilation"))
    h = _out_size(h_in, w.shape[2], sh, ph, dh, "conv2d")
    wd = _out_size(w_in, w.shape[3], sw, pw, dw, "conv2d")
    return [TensorType((n, h, wd, w.shape[0]) if last else (n, w.shape[0], h, wd), x.dtype)]


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """[N, C, OH, OW, KH, KW] strided view of the windows of a padded input."""
    span = ((kernel[0] - 1) * dilation[0] + 1, (kernel[1] - 1) * dilation[1] + 1)
    view = sliding_window_view(x, span, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


def conv2d(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x, w = a[0], a[1]
    if attrs["layout"] == "nhwc":  # the same cross-correlation on the transposed image
        return np.ascontiguousarray(conv2d([x.transpose(0, 3, 1, 2), *a[1:]], {**attrs, "layout": "nchw"})
                                    .transpose(0, 2, 3, 1))
    (ph, pw) = pair("padding", attrs["padding"])
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = _windows(x, (w.shape[2], w.shape[3]), pair("stride", attrs["stride"]), pair("dilation", attrs["dilation"]))
    g = attrs["groups"]
    n, c, oh, ow, kh, kw = win.shape
    win = win.reshape(n, g, c // g, oh, ow, kh, kw)
    wg = w.reshape(g, w.shape[0] // g, c // g, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(n, w.shape[0], oh, ow)
    return out + a[2].reshape(1, -1, 1, 1) if len(a) == 3 else out


def _pool_infer(name: str) -> Any:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        x = types[0]
        need_rank(name, x, 4)
        kernel = pair(name + " kernel", attrs["kernel"])
        stride = pair(name + " stride", attrs["stride"] or attrs["kernel"])
        pad = pair(name + " padding", attrs["padding"])
        dil = pair(name + " dilation", attrs.get("dilation", [1]))
        if any(p * 2 > k for p, k in zip(pad, kernel)):
            raise InferenceError(f"{name}: padding {list(pad)} exceeds half the kernel {list(kernel)}")
        h = _out_size(x.shape[2], kernel[0], stride[0], pad[0], dil[0], name, attrs["ceil_mode"])
        w = _out_size(x.shape[3], kernel[1], stride[1], pad[1], dil[1], name, attrs["ceil_mode"])
        return [x.with_shape((x.shape[0], x.shape[1], h, w))]

    return infer


def pool_geometry(x: Any, attrs: Mapping[str, Any]) -> tuple:
    """For ``x`` (an array or a tensor type: anything with a static ``shape``): kernel, stride, dilation, padding, output size, and the extra right padding a ceil-mode last
    window needs, per spatial axis."""
    kernel, stride = pair("kernel", attrs["kernel"]), pair("stride", attrs["stride"] or attrs["kernel"])
    dilation, pad = pair("dilation", attrs.get("dilation", [1])), pair("padding", attrs["padding"])
    out = tuple(_out_size(x.shape[2 + i], kernel[i], stride[i], pad[i], dilation[i], "pool", attrs["ceil_mode"])
                for i in range(2))
    extra = tuple(max(0, (out[i] - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1 - x.shape[2 + i] - 2 * pad[i])
                  for i in range(2))
    return kernel, stride, dilation, pad, out, extra


def max_pool2d(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0]
    kernel, stride, dilation, (ph, pw), out, (eh, ew) = pool_geometry(x, attrs)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=low)
    return _windows(x, kernel, stride, dilation)[:, :, :out[0], :out[1]].max(axis=(-2, -1))


def avg_pool2d(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    """torch's divisor: the window clipped to the padded input (count_include_pad), else to the input."""
    x = a[0]
    kernel, stride, _, pad, out, extra = pool_geometry(x, attrs)
    padded = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0] + extra[0]), (pad[1], pad[1] + extra[1])))
    total = _windows(padded, kernel, stride, (1, 1))[:, :, :out[0], :out[1]].sum(axis=(-2, -1))
    if attrs["divisor_override"]:
        return total / x.dtype.type(attrs["divisor_override"])
    counts = []
    for i in range(2):
        start = np.arange(out[i]) * stride[i] - pad[i]
        end = np.minimum(start + kernel[i], x.shape[2 + i] + pad[i])
        if not attrs["count_include_pad"]:
            start, end = np.maximum(start, 0), np.minimum(end, x.shape[2 + i])
        counts.append(end - start)
    return total / (counts[0][:, None] * counts[1][None, :]).astype(x.dtype)


def _batch_norm_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = types[0]
    need_float("batch_norm", x)
    same_dtype("batch_norm", types)
    if x.rank < 2:
        raise InferenceError(f"batch_norm needs [N, C, ...], got {x}")
    for t in types[1:]:
        if t.shape != (x.shape[1],):
            raise InferenceError(f"batch_norm: statistics/affine {t} should be [{x.shape[1]}]")
    return [x]


def batch_norm(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x, mean, var = a[:3]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + x.dtype.type(attrs["eps"]))
    if len(a) > 3:
        y = y * a[3].reshape(shape)
    if len(a) > 4:
        y = y + a[4].reshape(shape)
    return y


_POOL = {"kernel": AttrSpec("ints"), "stride": AttrSpec("ints", []), "padding": AttrSpec("ints", [0]),
         "ceil_mode": AttrSpec("bool", False)}

def _conv_flops(operands: Sequence[Sequence[int]], results: Sequence[Sequence[int]], attrs: Mapping[str, Any]) -> int:
    """2 x (output elements) x (weight elements per output channel: in/groups x kh x kw)."""
    return 2 * int(np.prod(results[0])) * int(np.prod(operands[1][1:]))


DEFS = [
    OpDef("conv2d", ("x", "weight", "bias?"), _conv_infer, conv2d, Category.LIBRARY,
          "2-D cross-correlation, NCHW input (NHWC with layout=nhwc, the result likewise), "
          "[out, in/groups, kh, kw] weight",
          {"stride": AttrSpec("ints", [1]), "padding": AttrSpec("ints", [0]), "dilation": AttrSpec("ints", [1]),
           "groups": AttrSpec("int", 1), "layout": AttrSpec("str", "nchw")}, flops=_conv_flops),
    OpDef("max_pool2d", ("x",), _pool_infer("max_pool2d"), max_pool2d, Category.LIBRARY, "max over windows (NCHW)",
          {**_POOL, "dilation": AttrSpec("ints", [1])}),
    OpDef("avg_pool2d", ("x",), _pool_infer("avg_pool2d"), avg_pool2d, Category.LIBRARY, "mean over windows (NCHW)",
          {**_POOL, "count_include_pad": AttrSpec("bool", True), "divisor_override": AttrSpec("int?", None)}),
    OpDef("batch_norm", ("x", "mean", "var", "weight?", "bias?"), _batch_norm_infer, batch_norm,
          Category.POINTWISE, "inference batch norm over dim 1 with running statistics", {"eps": AttrSpec("float", 1e-5)},
          remapped=(1, 2, 3, 4)),
]
