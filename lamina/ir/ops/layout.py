"""Layout and indexing ops: reshape, permute, expand, slice, concat, stack, split, gather, index, tril/triu."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sympy

from ..opdef import ALL_OPERANDS, AttrSpec, InferenceError, Category, OpDef, axes, need_int, same_dtype
from ..shapes import broadcast, dim, numel
from ..types import TensorType


def _reshape_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, shape = types[0], list(attrs["shape"])
    if shape.count(-1) > 1:
        raise InferenceError(f"reshape: at most one -1 in shape {shape}")
    if -1 in shape:
        known = numel([d for d in shape if d != -1])
        shape[shape.index(-1)] = dim(sympy.cancel(sympy.sympify(numel(x.shape)) / known))
    if sympy.simplify(sympy.sympify(numel(shape)) - numel(x.shape)) != 0:
        raise InferenceError(f"reshape: cannot view {x} as {shape} (element counts differ)")
    return [x.with_shape(tuple(dim(d) for d in shape))]


def _permute_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, dims = types[0], attrs["dims"]
    if sorted(axes("permute", dims, x.rank)) != list(range(x.rank)):
        raise InferenceError(f"permute: dims {dims} are not a permutation of {x.rank} axes")
    return [x.with_shape(tuple(x.shape[d % x.rank] for d in dims))]


def _expand_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, shape = types[0], attrs["shape"]
    if len(shape) < x.rank:
        raise InferenceError(f"expand: target {shape} has fewer dims than {x}")
    lead = len(shape) - x.rank
    out = []
    for i, d in enumerate(shape):
        src = x.shape[i - lead] if i >= lead else None
        if d == -1:
            if src is None:
                raise InferenceError(f"expand: -1 in a new leading dim of {shape}")
            d = src
        elif src is not None and src != 1 and src != d:
            raise InferenceError(f"expand: cannot expand {x} to {shape}")
        out.append(dim(d))
    return [x.with_shape(tuple(out))]


def _nonnegative(x: Any) -> bool:
    return (isinstance(x, int) and x >= 0) or (isinstance(x, sympy.Expr) and x.is_nonnegative is True)


def _slice_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x = types[0]
    (d,) = axes("slice", [attrs["dim"]], x.rank)
    start, end, step = attrs["start"], attrs["end"], attrs["step"]
    if step < 1:
        raise InferenceError(f"slice: step must be >= 1, got {step}")
    size = x.shape[d]
    if isinstance(size, int) and isinstance(start, int) and isinstance(end, int):
        length = len(range(*slice(start, end, step).indices(size)))
    elif _nonnegative(start) and _nonnegative(end):  # symbolic bounds (a cache length): clipped to the dim
        first, last = sympy.Min(sympy.sympify(start), size), sympy.Min(sympy.sympify(end), size)
        length = dim(sympy.Max(0, sympy.ceiling((last - first) / step)))
    else:
        raise InferenceError(f"slice: cannot size a slice [{start}:{end}:{step}] of symbolic dim {size}")
    return [x.with_shape(x.shape[:d] + (length,) + x.shape[d + 1:])]


def _slice_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0]
    index = [slice(None)] * x.ndim
    index[attrs["dim"] % x.ndim] = slice(attrs["start"], attrs["end"], attrs["step"])
    return x[tuple(index)]


def _concat_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    first = types[0]
    dtype = same_dtype("concat", types)
    (d,) = axes("concat", [attrs["dim"]], first.rank)
    for t in types[1:]:
        if t.rank != first.rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != d):
            raise InferenceError(f"concat along {d}: {first} and {t} differ in another dim")
    total = dim(sum((sympy.sympify(t.shape[d]) for t in types), sympy.Integer(0)))
    return [TensorType(first.shape[:d] + (total,) + first.shape[d + 1:], dtype)]


def _stack_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    first = types[0]
    dtype = same_dtype("stack", types)
    if any(t.shape != first.shape for t in types[1:]):
        raise InferenceError(f"stack: operands differ in shape ({', '.join(str(t) for t in types)})")
    (d,) = axes("stack", [attrs["dim"]], first.rank + 1)
    return [TensorType(first.shape[:d] + (len(types),) + first.shape[d:], dtype)]


def _split_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, sizes = types[0], attrs["sizes"]
    (d,) = axes("split", [attrs["dim"]], x.rank)
    total = dim(sum((sympy.sympify(s) for s in sizes), sympy.Integer(0)))
    if total != x.shape[d]:
        raise InferenceError(f"split: sizes {sizes} do not add up to dim {d} of {x}")
    return [x.with_shape(x.shape[:d] + (s,) + x.shape[d + 1:]) for s in sizes]


def _split_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    cuts = np.cumsum(attrs["sizes"])[:-1]
    return tuple(np.split(a[0], cuts, axis=attrs["dim"]))


def _in_range(name: str, idx: np.ndarray, size: int, wrap: bool = False) -> np.ndarray:
    """``idx`` checked against a dim of ``size`` as torch checks it; negative entries count from the
    end only when ``wrap`` (``x[i]``), else they are errors (gather, index_select, embedding)."""
    low = -size if wrap else 0
    if idx.size and (idx.min() < low or idx.max() >= size):
        bad = idx[(idx < low) | (idx >= size)].flat[0]
        raise IndexError(f"{name}: index {bad} is out of range for a dim of size {size}")
    return idx


def _gather_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, idx = types
    need_int("gather", idx)
    axes("gather", [attrs["dim"]], x.rank)
    if idx.rank != x.rank:
        raise InferenceError(f"gather: index {idx} must have the rank of {x}")
    return [x.with_shape(idx.shape)]


def _index_select_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, idx = types
    need_int("index_select", idx)
    if idx.rank != 1:
        raise InferenceError(f"index_select: index must be rank 1, got {idx}")
    (d,) = axes("index_select", [attrs["dim"]], x.rank)
    return [x.with_shape(x.shape[:d] + idx.shape + x.shape[d + 1:])]


def _index_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, idx = types[0], types[1:]
    positions = axes("index", attrs["positions"], x.rank)
    if len(positions) != len(idx) or not idx:
        raise InferenceError(f"index: {len(idx)} index tensors for positions {attrs['positions']}")
    for t in idx:
        need_int("index", t)
    try:
        picked = broadcast(*(t.shape for t in idx))
    except ValueError as e:
        raise InferenceError(f"index: {e}") from None
    rest = [i for i in range(x.rank) if i not in positions]
    if list(positions) == list(range(positions[0], positions[0] + len(positions))):
        before = tuple(x.shape[i] for i in rest if i < positions[0])
        after = tuple(x.shape[i] for i in rest if i > positions[-1])
        shape = before + picked + after
    else:
        shape = picked + tuple(x.shape[i] for i in rest)
    return [x.with_shape(shape)]


def _index_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0]
    key: list[Any] = [slice(None)] * x.ndim
    for pos, idx in zip(attrs["positions"], a[1:]):
        key[pos % x.ndim] = _in_range("index", idx, x.shape[pos % x.ndim], wrap=True)
    return x[tuple(key)]


def _tri_infer(name: str) -> Any:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        if types[0].rank < 2:
            raise InferenceError(f"{name} needs rank >= 2, got {types[0]}")
        return [types[0]]

    return infer


DEFS = [
    OpDef("reshape", ("x",), _reshape_infer, lambda a, at: np.reshape(a[0], at["shape"]), Category.VIEW,
          "same elements in a new shape (one dim may be -1)", {"shape": AttrSpec("dims")}),
    OpDef("permute", ("x",), _permute_infer, lambda a, at: np.transpose(a[0], at["dims"]), Category.VIEW,
          "reorder axes: out.shape[i] = x.shape[dims[i]]", {"dims": AttrSpec("ints")}, remapped=(0,)),
    OpDef("expand", ("x",), _expand_infer, lambda a, at: np.broadcast_to(a[0], at["shape"]), Category.VIEW,
          "broadcast to a larger shape (-1 keeps a dim)", {"shape": AttrSpec("dims")}),
    OpDef("slice", ("x",), _slice_infer, _slice_ref, Category.VIEW, "x[start:end:step] along dim",
          {"dim": AttrSpec("int"), "start": AttrSpec("dim", 0), "end": AttrSpec("dim"), "step": AttrSpec("int", 1)},
          remapped=(0,)),
    OpDef("concat", ("*xs",), _concat_infer, lambda a, at: np.concatenate(a, axis=at["dim"]), Category.POINTWISE,
          "join along dim", {"dim": AttrSpec("int")}, remapped=ALL_OPERANDS),
    OpDef("stack", ("*xs",), _stack_infer, lambda a, at: np.stack(a, axis=at["dim"]), Category.LIBRARY,
          "join equal-shaped tensors along a new dim (stacked layer weights)", {"dim": AttrSpec("int", 0)}),
    OpDef("split", ("x",), _split_infer, _split_ref, Category.VIEW, "cut along dim into pieces of the given sizes",
          {"sizes": AttrSpec("dims"), "dim": AttrSpec("int")}, remapped=(0,)),
    OpDef("gather", ("x", "index"), _gather_infer, lambda a, at: np.take_along_axis(
        a[0], _in_range("gather", a[1], a[0].shape[at["dim"]]), axis=at["dim"]),
          Category.POINTWISE, "out[i][j] = x[index[i][j]][j] for dim 0 (torch.gather)", {"dim": AttrSpec("int")},
          remapped=(0,)),
    OpDef("index_select", ("x", "index"), _index_select_infer, lambda a, at: np.take(
        a[0], _in_range("index_select", a[1], a[0].shape[at["dim"]]), axis=at["dim"]),
          Category.POINTWISE, "pick slices along dim by a rank-1 index", {"dim": AttrSpec("int")},
          remapped=(0,)),
    OpDef("index", ("x", "*indices"), _index_infer, _index_ref, Category.POINTWISE,
          "advanced indexing by broadcast integer tensors at the given positions (NumPy rules)",
          {"positions": AttrSpec("ints")}, remapped=(0,)),
    OpDef("tril", ("x",), _tri_infer("tril"), lambda a, at: np.tril(a[0], at["diagonal"]), Category.POINTWISE,
          "zero above the diagonal", {"diagonal": AttrSpec("int", 0)}),
    OpDef("triu", ("x",), _tri_infer("triu"), lambda a, at: np.triu(a[0], at["diagonal"]), Category.POINTWISE,
          "zero below the diagonal", {"diagonal": AttrSpec("int", 0)}),
]
