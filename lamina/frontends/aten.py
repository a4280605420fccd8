"""ATen op -> lamina op translations, one small function per ATen op family.

``CONVERTERS`` maps a target name (``"aten.add.Tensor"``) to a function
``(cx, *args, **kwargs)`` whose tensor arguments are already lamina Values.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import sympy

from ..ir.core import Value
from ..ir.dtypes import DType
from ..ir.shapes import dim
from .context import Context, Unsupported, promoted

Converter = Callable[..., Any]
_table: dict[str, Converter] = {}


def converts(*targets: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        for t in targets:
            assert t not in _table, t
            _table[t] = fn
        return fn

    return register


# ---- elementwise ----------------------------------------------------------------------

_UNARY = {"neg": "neg", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "tanh": "tanh",
          "sigmoid": "sigmoid", "relu": "relu", "silu": "silu", "abs": "abs", "sin": "sin", "cos": "cos",
          "erf": "erf", "reciprocal": "reciprocal", "floor": "floor", "ceil": "ceil", "trunc": "trunc",
          "log1p": "log1p", "sign": "sign", "sgn": "sign", "hardswish": "hardswish"}


def _unary(name: str) -> Converter:
    def convert(cx: Context, x: Value) -> Value:
        dtype = cx.out_type.dtype
        if name in ("floor", "ceil", "trunc") and not dtype.is_float:
            return cx.emit("identity", cx.value(x, dtype))  # integers are already whole
        return cx.emit(name, cx.value(x, dtype))

    return convert


for _aten, _name in _UNARY.items():
    converts(f"aten.{_aten}.default")(_unary(_name))


@converts("aten.gelu.default")
def _gelu(cx: Context, x: Value, approximate: str = "none") -> Value:
    return cx.emit("gelu", x, approximate=approximate)


@converts("aten.logical_not.default", "aten.bitwise_not.default")
def _not(cx: Context, x: Value) -> Value:
    if x.type.dtype is DType.bool:
        return cx.emit("logical_not", x)
    if "bitwise" in cx.loc.target:
        raise Unsupported("bitwise not of integers is not supported; only bool tensors")
    return cx.emit("eq", x, cx.value(0, x.type.dtype))  # logical_not of numbers: x == 0


def _arith(name: str) -> Converter:
    def convert(cx: Context, a: Any, b: Any, alpha: Any = 1) -> Value:
        dtype = cx.out_type.dtype
        rhs = cx.value(b, dtype)
        if alpha != 1:
            rhs = cx.emit("mul", rhs, cx.value(alpha, dtype))
        return cx.emit(name, cx.value(a, dtype), rhs)

    return convert


for _name in ("add", "sub", "mul"):
    converts(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_arith(_name))
converts("aten.maximum.default")(_arith("maximum"))
converts("aten.minimum.default")(_arith("minimum"))

# in-place ops torch.export leaves on intermediates (``x += residual`` in ResNet's blocks), translated as
# the functional op where nothing else can see the mutation (frontends/fx.py ``_unseen_mutation``);
# otherwise the program is decomposed first, which makes it functional
IN_PLACE = frozenset({"aten.add_.Tensor"})
converts("aten.add_.Tensor")(_arith("add"))


@converts("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(cx: Context, a: Any, b: Any, alpha: Any = 1) -> Value:
    return _arith("sub")(cx, b, a, 1) if alpha == 1 else _arith("sub")(cx, cx.emit("mul", cx.value(a, cx.out_type.dtype), cx.value(alpha, cx.out_type.dtype)), b)


@converts("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div(cx: Context, a: Any, b: Any, rounding_mode: str | None = None) -> Value:
    dtype = cx.out_type.dtype
    a, b = cx.value(a, dtype), cx.value(b, dtype)
    if rounding_mode is None:
        return cx.emit("div", a, b)
    if rounding_mode == "floor":
        return cx.emit("floor_divide", a, b)
    if rounding_mode != "trunc":
        raise Unsupported(f"division with rounding_mode={rounding_mode!r}; torch knows 'floor', 'trunc' and None")
    if dtype.is_float:
        return cx.emit("trunc", cx.emit("div", a, b))
    # integers: a - fmod(a, b) is a multiple of b, so its floor quotient is the truncated one
    return cx.emit("floor_divide", cx.emit("sub", a, cx.emit("fmod", a, b)), b)


def _division(name: str) -> Converter:
    def convert(cx: Context, a: Any, b: Any) -> Value:
        dtype = cx.out_type.dtype
        return cx.emit(name, cx.value(a, dtype), cx.value(b, dtype))

    return convert


converts("aten.floor_divide.default", "aten.floor_divide.Scalar")(_division("floor_divide"))
converts("aten.remainder.Tensor", "aten.remainder.Scalar", "aten.remainder.Scalar_Tensor")(_division("remainder"))
converts("aten.fmod.Tensor", "aten.fmod.Scalar")(_division("fmod"))


@converts("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def _pow(cx: Context, a: Any, b: Any) -> Value:
    dtype = cx.out_type.dtype
    return cx.emit("pow", cx.value(a, dtype), cx.value(b, dtype))


def _compare(name: str) -> Converter:
    def convert(cx: Context, a: Any, b: Any) -> Value:
        dtype = promoted(a, b)
        return cx.emit(name, cx.value(a, dtype), cx.value(b, dtype))

    return convert


for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    converts(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_compare(_name))


def _logical(name: str, bitwise: bool) -> Converter:
    def convert(cx: Context, a: Any, b: Any) -> Value:
        if bitwise and cx.out_type.dtype is not DType.bool:
            raise Unsupported("bitwise ops on integers are not supported; only bool tensors")
        return cx.emit(name, cx.value(a, DType.bool), cx.value(b, DType.bool))

    return convert


for _name in ("and", "or", "xor"):
    converts(f"aten.logical_{_name}.default")(_logical(f"logical_{_name}", False))
    converts(f"aten.bitwise_{_name}.Tensor", f"aten.bitwise_{_name}.Scalar", f"aten.__{_name}__.Tensor")(
        _logical(f"logical_{_name}", True))


@converts("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def _where(cx: Context, cond: Value, a: Any, b: Any) -> Value:
    dtype = cx.out_type.dtype
    return cx.emit("where", cx.value(cond, DType.bool), cx.value(a, dtype), cx.value(b, dtype))


@converts("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(cx: Context, x: Value, mask: Value, value: Any) -> Value:
    return cx.emit("where", cx.value(mask, DType.bool), cx.value(value, x.type.dtype), x)


@converts("aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default", "aten.hardtanh.default")
def _clamp(cx: Context, x: Value, lo: Any = None, hi: Any = None, *, min: Any = None, max: Any = None) -> Value:
    lo = lo if lo is not None else min
    hi = hi if hi is not None else max
    if cx.loc.target.startswith("aten.clamp_max"):
        lo, hi = None, lo
    if cx.loc.target.startswith("aten.hardtanh"):
        lo, hi = (-1.0 if lo is None else lo), (1.0 if hi is None else hi)
    return cx.emit("clamp", cx.value(x, cx.out_type.dtype), min=None if lo is None else float(lo),
                   max=None if hi is None else float(hi))


@converts("aten.clamp.Tensor", "aten.clamp_min.Tensor", "aten.clamp_max.Tensor")
def _clamp_tensor(cx: Context, x: Value, lo: Any = None, hi: Any = None) -> Value:
    """clamp with tensor bounds: maximum with the lower, then minimum with the upper (as torch)."""
    if cx.loc.target.startswith("aten.clamp_max"):
        lo, hi = None, lo
    dtype = cx.out_type.dtype
    y = cx.value(x, dtype)
    if lo is not None:
        y = cx.emit("maximum", y, cx.value(lo, dtype))
    if hi is not None:
        y = cx.emit("minimum", y, cx.value(hi, dtype))
    return y


# ---- casts and identities -------------------------------------------------------------

@converts("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten.type_as.default",
          "aten.to.other", "aten._to_dim_order_copy.default")
def _to(cx: Context, x: Value, *args: Any, **kwargs: Any) -> Value:
    return cx.value(x, cx.out_type.dtype)


@converts("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default",
          "aten.contiguous.default")
def _identity(cx: Context, x: Value, *args: Any, **kwargs: Any) -> Value:
    return cx.emit("identity", x)


@converts("aten.dropout.default", "aten.native_dropout.default", "aten.feature_dropout.default",
          "aten.dropout_.default")  # in place only in training, which is refused
def _dropout(cx: Context, x: Value, p: float = 0.5, train: bool | None = False) -> Any:
    if train and p > 0:
        raise Unsupported(f"dropout in training mode (p={p}) is random; lamina compiles inference: call "
                          "model.eval() before compiling")
    y = cx.emit("dropout", x, p=float(p))
    return (y, None) if "native" in cx.loc.target else y


# ---- layout ---------------------------------------------------------------------------

@converts("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.unsqueeze.default",
          "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", "aten.flatten.using_ints",
          "aten.unflatten.int", "aten.view_as.default", "aten.reshape_as.default")
def _reshape(cx: Context, x: Value, *args: Any) -> Value:
    return cx.reshape(x, cx.out_type.shape)


@converts("aten.permute.default")
def _permute(cx: Context, x: Value, dims: Sequence[int]) -> Value:
    return cx.emit("permute", x, dims=[d % max(x.type.rank, 1) for d in dims])


@converts("aten.transpose.int", "aten.t.default")
def _transpose(cx: Context, x: Value, d0: int = 0, d1: int = 1) -> Value:
    rank = x.type.rank
    if rank < 2:
        return cx.emit("identity", x)
    dims = list(range(rank))
    a, b = d0 % rank, d1 % rank
    dims[a], dims[b] = dims[b], dims[a]
    return cx.emit("permute", x, dims=dims)


@converts("aten.numpy_T.default")
def _numpy_t(cx: Context, x: Value) -> Value:
    """``x.T``: all dims reversed."""
    if x.type.rank < 2:
        return cx.emit("identity", x)
    return cx.emit("permute", x, dims=list(range(x.type.rank))[::-1])


@converts("aten.expand.default", "aten.expand_as.default", "aten.broadcast_to.default")
def _expand(cx: Context, x: Value, *args: Any, **kwargs: Any) -> Value:
    shape = list(cx.out_type.shape)
    return x if list(x.type.shape) == shape else cx.emit("expand", x, shape=shape)


def _bound(i: Any, size: Any, default: Any) -> Any:
    if i is None:
        return default
    i = dim(i)
    if isinstance(i, int) and isinstance(size, int):
        if i < 0:
            i += size
        return min(max(i, 0), size)
    if isinstance(i, int) and i >= 2**62:
        return size
    return i


@converts("aten.slice.Tensor")
def _slice(cx: Context, x: Value, d: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Value:
    d %= x.type.rank
    size = x.type.shape[d]
    start, end = _bound(start, size, 0), _bound(end, size, size)
    length = cx.out_type.shape[d]
    if (start == 0 and end == size and step == 1) or (start == 0 and step == 1 and length == size):
        return x  # (torch's guards may know that x[:48] is all of x)
    if isinstance(size, int) and not isinstance(end, int) and length == dim(sympy.sympify(end) - start):
        raise Unsupported(f"slice [{start}:{end}] of a dim of {size}: torch's guards bound {end} by {size}, a bound "
                          "lamina's symbolic sizes cannot carry yet (lamina would size it min(end, dim))")
    return cx.emit("slice", x, dim=d, start=start, end=end, step=step)


@converts("aten.select.int")
def _select(cx: Context, x: Value, d: int, index: int) -> Value:
    d %= x.type.rank
    index = _bound(index, x.type.shape[d], 0)
    piece = cx.emit("slice", x, dim=d, start=index, end=index + 1, step=1)
    return cx.reshape(piece, cx.out_type.shape)


@converts("aten.stack.default")
def _stack(cx: Context, tensors: Sequence[Value], d: int = 0) -> Value:
    dtype = cx.out_type.dtype
    return cx.emit("stack", *(cx.value(t, dtype) for t in tensors), dim=d % cx.out_type.rank)


@converts("aten.cat.default", "aten.concat.default")
def _cat(cx: Context, tensors: Sequence[Value], d: int = 0) -> Value:
    dtype = cx.out_type.dtype
    parts = [cx.value(t, dtype) for t in tensors if not (t.type.rank == 1 and t.type.shape[0] == 0)]
    if not parts:  # only legacy empty vectors: an empty result
        return _filled(cx, 0)
    if len(parts) == 1:
        return cx.emit("identity", parts[0])
    return cx.emit("concat", *parts, dim=d % cx.out_type.rank)


@converts("aten.split.Tensor", "aten.split_with_sizes.default", "aten.chunk.default", "aten.tensor_split.sections")
def _split(cx: Context, x: Value, sizes: Any, d: int = 0) -> tuple[Value, ...]:
    d %= x.type.rank
    pieces = [t.shape[d] for t in cx.out]
    if len(pieces) == 1:
        return (cx.emit("identity", x),)
    return cx.emit_multi("split", [x], sizes=pieces, dim=d)


@converts("aten.unbind.int")
def _unbind(cx: Context, x: Value, d: int = 0) -> tuple[Value, ...]:
    d %= x.type.rank
    n = x.type.shape[d]
    if not isinstance(n, int):
        raise Unsupported("unbind along a symbolic dim")
    pieces = cx.emit_multi("split", [x], sizes=[1] * n, dim=d) if n > 1 else (x,)
    return tuple(cx.reshape(p, t.shape) for p, t in zip(pieces, cx.out))


@converts("aten.tril.default", "aten.triu.default")
def _tri(cx: Context, x: Value, diagonal: int = 0) -> Value:
    return cx.emit(cx.loc.target.split(".")[1], x, diagonal=diagonal)


@converts("aten.repeat.default")
def _repeat(cx: Context, x: Value, repeats: Sequence[Any]) -> Value:
    """x.repeat(r): tile with expand over a new axis before each dim, then merge the pairs."""
    lead = len(repeats) - x.type.rank
    shape = [1] * lead + list(x.type.shape)
    paired = [d for s in shape for d in (1, s)]
    tiled = [d for r, s in zip(repeats, shape) for d in (r, s)]
    expanded = cx.emit("expand", cx.reshape(x, paired), shape=[dim(d) for d in tiled])
    return cx.reshape(expanded, cx.out_type.shape)


@converts("aten.repeat_interleave.self_int")
def _repeat_interleave(cx: Context, x: Value, repeats: Any, d: int | None = None, output_size: Any = None) -> Value:
    if isinstance(repeats, Value):
        raise Unsupported("repeat_interleave by a tensor of counts gives a data-dependent shape")
    if d is None:
        x, d = cx.reshape(x, (-1,)), 0
    d %= x.type.rank
    shape = list(x.type.shape)
    wide = shape[:d + 1] + [repeats] + shape[d + 1:]
    expanded = cx.emit("expand", cx.reshape(x, shape[:d + 1] + [1] + shape[d + 1:]), shape=[dim(s) for s in wide])
    return cx.reshape(expanded, cx.out_type.shape)


@converts("aten.constant_pad_nd.default")
def _constant_pad(cx: Context, x: Value, pad: Sequence[Any], value: Any = 0) -> Value:
    """torch's pad list runs from the last dim backwards: (left, right, top, bottom, ...)."""
    rank = x.type.rank
    low, high = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        low[rank - 1 - i], high[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    if not any(low) and not any(high):
        return cx.emit("identity", x)
    dtype = x.type.dtype
    fill = bool(value) if dtype is DType.bool else float(value) if dtype.is_float else int(value)
    return cx.emit("pad", x, low=low, high=high, value=fill)


@converts("aten.pad.default")
def _pad(cx: Context, x: Value, pad: Sequence[Any], mode: str = "constant", value: Any = None) -> Value:
    if mode != "constant":
        raise Unsupported(f"pad mode {mode!r} (its decomposition is translated instead)")
    return _constant_pad(cx, x, pad, 0 if value is None else value)


@converts("aten.roll.default")
def _roll(cx: Context, x: Value, shifts: Sequence[Any], dims: Sequence[int] = ()) -> Value:
    """Per dim, the last ``shift`` elements moved to the front: a concat of two slices."""
    if not dims or len(dims) != len(shifts):
        raise Unsupported("roll of the flattened tensor (its decomposition is translated instead)")
    for shift, d in zip(shifts, dims):
        d %= x.type.rank
        n = x.type.shape[d]
        if not isinstance(n, int) or not isinstance(shift, int):
            raise Unsupported("roll by a symbolic amount or along a symbolic dim")
        if n == 0 or shift % n == 0:
            continue  # an empty dim, or a whole turn
        cut = n - shift % n
        head = cx.emit("slice", x, dim=d, start=cut, end=n, step=1)
        tail = cx.emit("slice", x, dim=d, start=0, end=cut, step=1)
        x = cx.emit("concat", head, tail, dim=d)
    return cx.emit("identity", x)


@converts("aten.diff.default")
def _diff(cx: Context, x: Value, n: int = 1, d: int = -1, prepend: Value | None = None,
          append: Value | None = None) -> Value:
    """``x[1:] - x[:-1]`` along ``d``, ``n`` times, after joining ``prepend`` and ``append``; booleans
    differ where they are unequal (``ne``), as in torch."""
    d %= x.type.rank
    parts = [p for p in (prepend, x, append) if p is not None]
    if len(parts) > 1:
        x = cx.emit("concat", *parts, dim=d)
    for _ in range(n):
        size = x.type.shape[d]
        if not isinstance(size, int):
            raise Unsupported("diff along a symbolic dim")
        later = cx.emit("slice", x, dim=d, start=1, end=max(size, 1), step=1)
        earlier = cx.emit("slice", x, dim=d, start=0, end=max(size - 1, 0), step=1)
        x = cx.emit("ne" if x.type.dtype is DType.bool else "sub", later, earlier)
    return x


@converts("aten.slice_scatter.default")
def _slice_scatter(cx: Context, x: Value, src: Value, d: int = 0, start: Any = None, end: Any = None,
                   step: int = 1) -> Value:
    d %= x.type.rank
    size = x.type.shape[d]
    start, end = _bound(start, size, 0), _bound(end, size, size)
    src = cx.value(src, x.type.dtype)
    if start == 0 and end == size and step == 1:
        return cx.emit("identity", src) if src.type.shape == x.type.shape else cx.emit("expand", src, shape=list(x.type.shape))
    return cx.emit("slice_scatter", x, src, dim=d, start=start, end=end, step=step)


@converts("aten.copy.default")
def _copy(cx: Context, x: Value, src: Value, non_blocking: bool = False) -> Value:
    """The functional copy_: src broadcast to x's shape, in x's dtype."""
    y = cx.value(src, x.type.dtype)
    return cx.emit("identity", y) if y.type.shape == x.type.shape else cx.emit("expand", y, shape=list(x.type.shape))


@converts("aten.as_strided.default")
def _as_strided(cx: Context, x: Value, size: Sequence[Any], stride: Sequence[Any], offset: Any = None) -> Value:
    """Defined on the input's row-major elements, which equal its storage only if it is contiguous."""
    traced = cx.traced[0] if cx.traced else None
    if traced is None or not traced.is_contiguous() or traced.storage_offset() != 0:
        raise Unsupported("as_strided of a tensor that is not contiguous reads its storage, which lamina's "
                          "value semantics do not model; make the input contiguous first")
    size, stride, offset = [dim(s) for s in size], [int(s) for s in stride], int(offset or 0)
    if offset == 0 and list(x.type.shape) == size:
        rowmajor = [1] * len(size)
        for i in range(len(size) - 2, -1, -1):
            rowmajor[i] = rowmajor[i + 1] * size[i + 1] if isinstance(size[i + 1], int) else None
        if all(n == 1 or s == r for n, s, r in zip(size, stride, rowmajor)):
            return cx.emit("identity", x)  # the row-major layout itself (size-1 dims' strides do not matter)
    if not all(isinstance(s, int) for s in size):
        raise Unsupported("as_strided with symbolic sizes")
    return cx.emit("as_strided", x, size=size, stride=stride, offset=offset)


# ---- indexing -------------------------------------------------------------------------

@converts("aten.embedding.default")
def _embedding(cx: Context, weight: Value, indices: Value, *args: Any) -> Value:
    return cx.emit("embedding", weight, indices)


@converts("aten.index.Tensor")
def _index(cx: Context, x: Value, indices: Sequence[Value | None]) -> Value:
    positions = [i for i, t in enumerate(indices) if t is not None]
    tensors = [indices[i] for i in positions]
    if any(t.type.dtype is DType.bool for t in tensors):
        raise Unsupported("indexing with a bool mask gives a data-dependent shape; use where() instead")
    return cx.emit("index", x, *tensors, positions=positions)


def _scalar_as_vector(name: str, cx: Context, x: Value, index: Value, d: int) -> Value:
    """index_select / gather of a 0-d tensor (torch treats it as one element): on a 1-element vector."""
    if x.type.rank:
        return cx.emit(name, x, index, dim=d % x.type.rank)
    picked = cx.emit(name, cx.reshape(x, (1,)), cx.reshape(index, (-1,)) if index.type.rank == 0 else index, dim=0)
    return cx.reshape(picked, cx.out_type.shape)


@converts("aten.index_select.default")
def _index_select(cx: Context, x: Value, d: int, index: Value) -> Value:
    return _scalar_as_vector("index_select", cx, x, index, d)


@converts("aten.gather.default")
def _gather(cx: Context, x: Value, d: int, index: Value, sparse_grad: bool = False) -> Value:
    return _scalar_as_vector("gather", cx, x, index, d)


@converts("aten.index_put.default", "aten.index_put_.default", "aten._unsafe_index_put.default")
def _index_put(cx: Context, x: Value, indices: Sequence[Value | None], values: Value, accumulate: bool = False) -> Value:
    positions = [i for i, t in enumerate(indices) if t is not None]
    tensors = [indices[i] for i in positions]
    if any(t.type.dtype is DType.bool for t in tensors):
        raise Unsupported("index_put with a bool mask; use where() instead")
    return cx.emit("index_put", x, cx.value(values, x.type.dtype), *tensors, positions=positions,
                   accumulate=bool(accumulate))


@converts("aten.topk.default")
def _topk(cx: Context, x: Value, k: int, d: int = -1, largest: bool = True, is_sorted: bool = True) -> tuple:
    return cx.emit_multi("topk", [x], k=int(k), dim=d % max(x.type.rank, 1), largest=bool(largest),
                         sorted=bool(is_sorted))


@converts("aten.sort.default", "aten.sort.stable")
def _sort(cx: Context, x: Value, *args: Any, **kwargs: Any) -> tuple:
    if "stable" in cx.loc.target:  # sort.stable(self, *, stable, dim=-1, descending=False)
        d, descending = kwargs.get("dim", -1), kwargs.get("descending", False)
    else:  # sort(self, dim=-1, descending=False)
        d = args[0] if args else kwargs.get("dim", -1)
        descending = args[1] if len(args) > 1 else kwargs.get("descending", False)
    return cx.emit_multi("sort", [x], dim=d % max(x.type.rank, 1), descending=bool(descending))


@converts("aten.histc.default")
def _histc(cx: Context, x: Value, bins: int = 100, low: Any = 0, high: Any = 0) -> Value:
    return cx.emit("histc", x, bins=int(bins), min=float(low), max=float(high))


# ---- creation -------------------------------------------------------------------------

@converts("aten.full.default", "aten.full_like.default", "aten.new_full.default")
def _full(cx: Context, *args: Any, **kwargs: Any) -> Value:
    value = kwargs.get("fill_value", args[-1] if args else None)
    return _filled(cx, value)


@converts("aten.zeros.default", "aten.zeros_like.default", "aten.new_zeros.default", "aten.empty.memory_format",
          "aten.empty_like.default", "aten.new_empty.default", "aten.empty_permuted.default",
          "aten.empty_strided.default")
def _zeros(cx: Context, *args: Any, **kwargs: Any) -> Value:
    return _filled(cx, 0)


@converts("aten.ones.default", "aten.ones_like.default", "aten.new_ones.default")
def _ones(cx: Context, *args: Any, **kwargs: Any) -> Value:
    return _filled(cx, 1)


@converts("aten.scalar_tensor.default")
def _scalar_tensor(cx: Context, value: Any, **kwargs: Any) -> Value:
    return _filled(cx, value)


def _filled(cx: Context, value: Any) -> Value:
    t = cx.out_type
    if isinstance(value, Value):
        raise Unsupported("fill value is a tensor")
    if t.dtype is DType.bool:
        value = bool(value)
    elif t.dtype.is_float:
        value = float(value)
    else:
        value = int(value)
    return cx.emit("full", shape=list(t.shape), value=value, dtype=t.dtype)


@converts("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(cx: Context, *args: Any, **kwargs: Any) -> Value:
    nums = [a for a in args if not isinstance(a, Value)]
    start, end, step = (0, nums[0], 1) if len(nums) == 1 else (nums[0], nums[1], nums[2] if len(nums) > 2 else 1)
    t = cx.out_type
    if any(isinstance(v, float) and not float(v).is_integer() for v in (start, end, step)):
        raise Unsupported("arange with fractional bounds")
    out = cx.emit("arange", start=dim(int(start) if isinstance(start, float) else start),
                  end=dim(int(end) if isinstance(end, float) else end), step=int(step), dtype=DType.i64)
    return cx.value(out, t.dtype)


# ---- contractions ---------------------------------------------------------------------

def _mat(cx: Context, a: Value, b: Value) -> Value:
    """torch.matmul semantics, vectors included, through the rank >= 2 lamina matmul."""
    lhs = cx.reshape(a, (1, a.type.shape[0])) if a.type.rank == 1 else a
    rhs = cx.reshape(b, (b.type.shape[0], 1)) if b.type.rank == 1 else b
    return cx.reshape(cx.emit("matmul", lhs, rhs), cx.out_type.shape)


@converts("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _matmul(cx: Context, a: Value, b: Value) -> Value:
    return _mat(cx, a, b)


@converts("aten.addmm.default")
def _addmm(cx: Context, bias: Value, a: Value, b: Value, beta: Any = 1, alpha: Any = 1) -> Value:
    prod = cx.emit("matmul", a, b)
    if alpha != 1:
        prod = cx.emit("mul", prod, cx.value(alpha, prod.type.dtype))
    if beta != 1:
        bias = cx.emit("mul", bias, cx.value(beta, bias.type.dtype))
    return cx.emit("add", prod, bias) if beta != 0 else prod


@converts("aten.linear.default")
def _linear(cx: Context, x: Value, weight: Value, bias: Value | None = None) -> Value:
    if x.type.rank == 0:
        raise Unsupported("linear of a scalar")
    if weight.type.rank != 2:
        raise Unsupported(f"linear with a rank-{weight.type.rank} weight")
    return cx.emit("linear", *([x, weight] + ([bias] if bias is not None else [])))


# ---- reductions -----------------------------------------------------------------------

def _dims(x: Value, dims: Any) -> list[int]:
    if dims is None:
        return []
    dims = [dims] if isinstance(dims, int) else list(dims)
    return [d % max(x.type.rank, 1) for d in dims]


def _reduction(name: str) -> Converter:
    def convert(cx: Context, x: Value, dims: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Value:
        if x.type.rank == 0:
            return cx.value(x, cx.out_type.dtype)
        return cx.emit(name, cx.value(x, cx.out_type.dtype), dims=_dims(x, dims), keepdim=keepdim)

    return convert


converts("aten.sum.dim_IntList", "aten.sum.default")(_reduction("sum"))
converts("aten.mean.dim", "aten.mean.default")(_reduction("mean"))
converts("aten.amax.default", "aten.max.default")(_reduction("amax"))
converts("aten.amin.default", "aten.min.default")(_reduction("amin"))


@converts("aten.max.dim")
def _max_dim(cx: Context, x: Value, d: int, keepdim: bool = False) -> tuple[Value, Value]:
    if x.type.rank == 0:
        return cx.emit("identity", x), cx.emit("full", shape=[], value=0, dtype=DType.i64)
    return (cx.emit("amax", x, dims=[d % x.type.rank], keepdim=keepdim),
            cx.emit("argmax", x, dim=d % x.type.rank, keepdim=keepdim))


@converts("aten.argmax.default")
def _argmax(cx: Context, x: Value, d: int | None = None, keepdim: bool = False) -> Value:
    if x.type.rank == 0:
        return cx.emit("full", shape=[], value=0, dtype=DType.i64)
    if d is None:
        flat = cx.reshape(x, (-1,))
        out = cx.emit("argmax", flat, dim=0, keepdim=False)
        return cx.reshape(out, cx.out_type.shape)
    return cx.emit("argmax", x, dim=d % x.type.rank, keepdim=keepdim)


@converts("aten.var.correction", "aten.var.dim", "aten.std.correction", "aten.std.dim", "aten.var_mean.correction")
def _var(cx: Context, x: Value, dims: Any = None, unbiased: Any = None, keepdim: bool = False, *,
         correction: Any = None) -> Any:
    if isinstance(unbiased, bool):
        corr = 1 if unbiased else 0
    else:
        corr = 1 if correction is None else float(correction)
    v = cx.emit("var", x, dims=_dims(x, dims), correction=corr, keepdim=keepdim)
    if cx.loc.target.startswith("aten.std"):
        return cx.emit("sqrt", v)
    if cx.loc.target.startswith("aten.var_mean"):
        return v, cx.emit("mean", x, dims=_dims(x, dims), keepdim=keepdim)
    return v


@converts("aten.linalg_vector_norm.default")
def _vector_norm(cx: Context, x: Value, order: Any = 2, dims: Any = None, keepdim: bool = False, *,
                 dtype: Any = None) -> Value:
    """||x||_p over dims from sums, maxima and powers."""
    out = cx.out_type.dtype
    x = cx.value(x, out)
    axes = _dims(x, dims)
    magnitude = cx.emit("abs", x)
    p = float(order)
    if p == float("inf"):
        return cx.emit("amax", magnitude, dims=axes, keepdim=keepdim)
    if p == float("-inf"):
        return cx.emit("amin", magnitude, dims=axes, keepdim=keepdim)
    if p == 0:
        nonzero = cx.value(cx.emit("ne", x, cx.value(0.0, out)), out)
        return cx.emit("sum", nonzero, dims=axes, keepdim=keepdim)
    if p == 1:
        return cx.emit("sum", magnitude, dims=axes, keepdim=keepdim)
    if p == 2:
        return cx.emit("sqrt", cx.emit("sum", cx.emit("mul", x, x), dims=axes, keepdim=keepdim))
    powered = cx.emit("pow", magnitude, cx.value(p, out))
    return cx.emit("pow", cx.emit("sum", powered, dims=axes, keepdim=keepdim), cx.value(1.0 / p, out))


@converts("aten.cumsum.default")
def _cumsum(cx: Context, x: Value, d: int, dtype: Any = None) -> Value:
    return cx.emit("cumsum", cx.value(x, cx.out_type.dtype), dim=d % max(x.type.rank, 1))


@converts("aten._softmax.default", "aten.softmax.int", "aten._log_softmax.default", "aten.log_softmax.int")
def _softmax(cx: Context, x: Value, d: int, half_to_float: Any = None) -> Value:
    name = "log_softmax" if "log_softmax" in cx.loc.target else "softmax"
    if x.type.rank == 0:  # one element: softmax 1 (log_softmax 0), NaN stays NaN
        x = cx.value(x, cx.out_type.dtype)
        zero = cx.emit("sub", x, x)
        return zero if name == "log_softmax" else cx.emit("exp", zero)
    return cx.emit(name, cx.value(x, cx.out_type.dtype), dim=d % max(x.type.rank, 1))


# ---- normalisation and attention ------------------------------------------------------

def _affine(*tensors: Value | None) -> list[Value]:
    present = list(tensors)
    while present and present[-1] is None:
        present.pop()
    if any(t is None for t in present):
        raise Unsupported("a norm with bias but no weight")
    return present  # type: ignore[return-value]


@converts("aten.layer_norm.default", "aten.native_layer_norm.default")
def _layer_norm(cx: Context, x: Value, shape: Sequence[int], weight: Value | None = None, bias: Value | None = None,
                eps: float = 1e-5, *rest: Any) -> Any:
    y = cx.emit("layer_norm", x, *_affine(weight, bias), normalized_ndim=len(shape), eps=float(eps))
    return (y, None, None) if "native" in cx.loc.target else y


@converts("aten.rms_norm.default")
def _rms_norm(cx: Context, x: Value, shape: Sequence[int], weight: Value | None = None, eps: float | None = None) -> Value:
    if eps is None:
        eps = {DType.f64: 2.220446049250313e-16, DType.f16: 0.0009765625, DType.bf16: 0.0078125}.get(
            x.type.dtype, 1.1920928955078125e-07)
    return cx.emit("rms_norm", x, *_affine(weight), normalized_ndim=len(shape), eps=float(eps))


@converts("aten.scaled_dot_product_attention.default")
def _sdpa(cx: Context, q: Value, k: Value, v: Value, attn_mask: Value | None = None, dropout_p: float = 0.0,
          is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Value:
    if dropout_p:
        raise Unsupported(f"attention dropout p={dropout_p}; compile the model in eval mode")
    if attn_mask is not None and is_causal:
        raise Unsupported("attention with both a mask and is_causal (torch rejects this too)")
    operands = [q, k, v] + ([attn_mask] if attn_mask is not None else [])
    gqa = bool(enable_gqa) or (q.type.rank >= 3 and q.type.shape[-3] != k.type.shape[-3])
    return cx.emit("attention", *operands, causal=bool(is_causal), scale=None if scale is None else float(scale),
                   gqa=gqa)


@converts("aten._native_batch_norm_legit_no_training.default")
def _batch_norm_eval(cx: Context, x: Value, weight: Value | None, bias: Value | None, mean: Value, var: Value,
                     momentum: float, eps: float) -> Any:
    y = cx.emit("batch_norm", x, mean, var, *_affine(weight, bias), eps=float(eps))
    return y, None, None


@converts("aten.batch_norm.default", "aten._native_batch_norm_legit_functional.default")
def _batch_norm(cx: Context, x: Value, weight: Value | None, bias: Value | None, mean: Value | None,
                var: Value | None, training: bool, momentum: float, eps: float, *rest: Any) -> Any:
    if training or mean is None or var is None:
        raise Unsupported("batch_norm in training mode normalises by batch statistics and updates its running "
                          "statistics; lamina compiles inference: call model.eval() before compiling")
    y = cx.emit("batch_norm", x, mean, var, *_affine(weight, bias), eps=float(eps))
    return y if "functional" not in cx.loc.target else (y, None, None, None, None)


# ---- convolution and pooling ----------------------------------------------------------

@converts("aten.convolution.default", "aten.conv2d.default", "aten.conv1d.default")
def _conv(cx: Context, x: Value, weight: Value, bias: Value | None = None, stride: Any = (1,), padding: Any = (0,),
          dilation: Any = (1,), *rest: Any) -> Value:
    if "convolution" in cx.loc.target:
        transposed, _, groups = rest
        if transposed:
            raise Unsupported("transposed convolution")
    else:
        groups = rest[0] if rest else 1
    if isinstance(padding, str):
        raise Unsupported(f"padding={padding!r}; give explicit padding")
    spatial = weight.type.rank - 2
    if spatial not in (1, 2):
        raise Unsupported(f"{spatial}-D convolution; 1-D (NCL) and 2-D (NCHW) are supported")
    if x.type.rank == spatial + 1:  # unbatched (C, ...): a batch of one
        y = _conv(cx, cx.reshape(x, (1, *x.type.shape)), weight, bias, stride, padding, dilation, *rest)
        return cx.reshape(y, cx.out_type.shape)
    if spatial == 1:  # (N, C, L): a 2-D convolution over (N, C, 1, L)
        n, c, length = x.type.shape
        o, ci, k = weight.type.shape
        one = lambda v: [1, int(v[-1])]  # noqa: E731 - (1, value) for the height axis
        operands = [cx.reshape(x, (n, c, 1, length)), cx.reshape(weight, (o, ci, 1, k))] + ([bias] if bias is not None else [])
        y = cx.emit("conv2d", *operands, stride=one(stride), padding=[0, int(padding[-1])], dilation=one(dilation),
                    groups=int(groups))
        return cx.reshape(y, cx.out_type.shape)
    operands = [x, weight] + ([bias] if bias is not None else [])
    return cx.emit("conv2d", *operands, stride=list(stride), padding=list(padding), dilation=list(dilation),
                   groups=int(groups))


@converts("aten.conv2d.padding", "aten.conv1d.padding")
def _conv_named_padding(cx: Context, x: Value, weight: Value, bias: Value | None = None, stride: Any = (1,),
                        padding: str = "valid", dilation: Any = (1,), groups: int = 1) -> Value:
    """``padding='valid'`` (none) or ``'same'`` (stride 1; an odd total puts the extra element after,
    as torch does, by padding the input first)."""
    spatial = weight.type.rank - 2
    dilation = list(dilation) * spatial if len(dilation) == 1 else list(dilation)
    if padding == "valid":
        return _conv(cx, x, weight, bias, stride, [0] * spatial, dilation, groups)
    if padding != "same" or any(s != 1 for s in stride):
        raise Unsupported(f"convolution with padding={padding!r} and stride {list(stride)}")
    totals = [d * (k - 1) for d, k in zip(dilation, weight.type.shape[2:])]
    if any(t % 2 for t in totals):
        pad: list[int] = []
        for t in reversed(totals):  # torch's pad list runs from the last dim: (left, right, ...)
            pad += [t // 2, t - t // 2]
        return _conv(cx, _constant_pad(cx, x, pad), weight, bias, stride, [0] * spatial, dilation, groups)
    return _conv(cx, x, weight, bias, stride, [t // 2 for t in totals], dilation, groups)


@converts("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default")
def _max_pool(cx: Context, x: Value, kernel: Any, stride: Any = (), padding: Any = (0,), dilation: Any = (1,),
              ceil_mode: bool = False) -> Any:
    y = cx.emit("max_pool2d", x, kernel=list(kernel), stride=list(stride), padding=list(padding),
                dilation=list(dilation), ceil_mode=bool(ceil_mode))
    return (y, None) if "indices" in cx.loc.target else y


@converts("aten.avg_pool2d.default")
def _avg_pool(cx: Context, x: Value, kernel: Any, stride: Any = (), padding: Any = (0,), ceil_mode: bool = False,
              count_include_pad: bool = True, divisor_override: Any = None) -> Value:
    return cx.emit("avg_pool2d", x, kernel=list(kernel), stride=list(stride), padding=list(padding),
                   ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad),
                   divisor_override=divisor_override)


@converts("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default")
def _adaptive_avg_pool(cx: Context, x: Value, output_size: Sequence[int]) -> Value:
    rank = x.type.rank
    h, w = x.type.shape[-2:]
    oh, ow = output_size if len(output_size) == 2 else (output_size[0], output_size[0])
    oh, ow = h if oh is None else oh, w if ow is None else ow
    if (oh, ow) == (1, 1):
        return cx.emit("mean", x, dims=[rank - 2, rank - 1], keepdim=True)
    if rank == 3:  # unbatched (C, H, W): a batch of one
        pooled = _adaptive_avg_pool(cx, cx.reshape(x, (1, *x.type.shape)), (oh, ow))
        return cx.reshape(pooled, pooled.type.shape[1:])
    if not (isinstance(h, int) and isinstance(w, int)) or h % oh or w % ow:
        raise Unsupported(f"adaptive average pooling from {h}x{w} to {oh}x{ow} (sizes must divide)")
    kernel = [h // oh, w // ow]
    return cx.emit("avg_pool2d", x, kernel=kernel, stride=kernel, padding=[0], ceil_mode=False,
                   count_include_pad=True, divisor_override=None)


@converts("aten.adaptive_avg_pool1d.default")
def _adaptive_avg_pool1d(cx: Context, x: Value, output_size: Sequence[int]) -> Value:
    if tuple(output_size) != (1,):
        raise Unsupported(f"adaptive average pooling to {list(output_size)} (its decomposition is translated instead)")
    return cx.emit("mean", x, dims=[x.type.rank - 1], keepdim=True)


NO_OUTPUT = frozenset({
    "aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",
    "aten._assert_async.msg", "aten.sym_constrain_range.default",
})

CONVERTERS = MappingProxyType(_table)  # read-only view; _table is filled once, at import
