"""Neural-network ops: linear, matmul, norms, embedding, attention, dropout, identity."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..opdef import AttrSpec, InferenceError, Category, OpDef, need_float, need_int, same_dtype
from ..shapes import broadcast
from ..types import TensorType
from .reduction import softmax


def _matmul_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    a, b = types
    dtype = same_dtype("matmul", types)
    if a.rank < 2 or b.rank < 2:
        raise InferenceError(f"matmul needs operands of rank >= 2, got {a} and {b}; reshape vectors first")
    if a.shape[-1] != b.shape[-2]:
        raise InferenceError(f"matmul: contracting dims differ: {a} @ {b}")
    try:
        batch = broadcast(a.shape[:-2], b.shape[:-2])
    except ValueError as e:
        raise InferenceError(f"matmul batch dims: {e}") from None
    return [TensorType(batch + (a.shape[-2], b.shape[-1]), dtype)]


def _linear_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, w = types[0], types[1]
    dtype = same_dtype("linear", types)
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise InferenceError(f"linear: input {x} does not fit weight {w} (weight is [out, in])")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        raise InferenceError(f"linear: bias {types[2]} should be [{w.shape[0]}]")
    return [TensorType(x.shape[:-1] + (w.shape[0],), dtype)]


def _linear_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    y = np.matmul(a[0], a[1].T)
    return y + a[2] if len(a) == 3 else y


def _norm_infer(name: str) -> Any:
    def infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
        x = types[0]
        need_float(name, x)
        same_dtype(name, types)
        n = attrs["normalized_ndim"]
        if not 1 <= n <= x.rank:
            raise InferenceError(f"{name}: normalized_ndim={n} does not fit {x}")
        for t in types[1:]:
            if t.shape != x.shape[-n:]:
                raise InferenceError(f"{name}: weight/bias {t} should have shape {list(x.shape[-n:])}")
        return [x]

    return infer


def layer_norm(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0]
    dims = tuple(range(x.ndim - attrs["normalized_ndim"], x.ndim))
    mean = np.mean(x, axis=dims, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=dims, keepdims=True)
    y = centered / np.sqrt(var + x.dtype.type(attrs["eps"]))
    if len(a) > 1:
        y = y * a[1]
    if len(a) > 2:
        y = y + a[2]
    return y


def rms_norm(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    x = a[0]
    dims = tuple(range(x.ndim - attrs["normalized_ndim"], x.ndim))
    ms = np.mean(x * x, axis=dims, keepdims=True)
    y = x / np.sqrt(ms + x.dtype.type(attrs["eps"]))
    return y * a[1] if len(a) > 1 else y


def _embedding_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    w, idx = types
    need_int("embedding", idx)
    if w.rank != 2:
        raise InferenceError(f"embedding: weight must be [vocab, dim], got {w}")
    return [TensorType(idx.shape + (w.shape[1],), w.dtype)]


def _embedding_ref(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    w, idx = a
    if idx.size and (idx.min() < 0 or idx.max() >= w.shape[0]):
        raise IndexError(f"embedding index out of range [0, {w.shape[0]})")
    return w[idx]


def _differ(a: Any, b: Any) -> bool:
    """Two dims that cannot be equal: both known and unequal. Different size symbols may be equal at
    run time (a key cache and a value cache of one length); the runtime checks them once sizes are known."""
    return isinstance(a, int) and isinstance(b, int) and a != b


def _attention_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    q, k, v = types[:3]
    dtype = same_dtype("attention", (q, k, v))
    need_float("attention", q)
    if min(q.rank, k.rank, v.rank) < 2 or q.rank != k.rank or k.rank != v.rank:
        raise InferenceError(f"attention: q, k, v must have one rank >= 2, got {q}, {k}, {v}")
    if _differ(q.shape[-1], k.shape[-1]) or _differ(k.shape[-2], v.shape[-2]):
        raise InferenceError(f"attention: q {q}, k {k}, v {v} disagree on head or key dims")
    if q.rank >= 3 and q.shape[-3] != k.shape[-3]:
        if not attrs["gqa"]:
            raise InferenceError(f"attention: q has {q.shape[-3]} heads, k has {k.shape[-3]}; set gqa=true")
        if isinstance(q.shape[-3], int) and isinstance(k.shape[-3], int) and q.shape[-3] % k.shape[-3]:
            raise InferenceError(f"attention: {q.shape[-3]} query heads are not a multiple of {k.shape[-3]} kv heads")
    out = TensorType(q.shape[:-1] + (v.shape[-1],), dtype)
    if len(types) == 4:
        mask = types[3]
        scores = q.shape[:-1] + (k.shape[-2],)
        if mask.dtype.value != "bool" and mask.dtype != dtype:
            raise InferenceError(f"attention: mask must be bool or {dtype}, got {mask}")
        try:
            if broadcast(mask.shape, scores) != tuple(scores):
                raise ValueError(f"mask {mask} does not broadcast to scores {list(scores)}")
        except ValueError as e:
            raise InferenceError(f"attention: {e}") from None
    return [out]


def attention(a: Sequence[np.ndarray], attrs: Mapping[str, Any]) -> np.ndarray:
    """softmax(q k^T * scale + mask) v, with causal masking and grouped kv heads."""
    q, k, v = a[:3]
    if attrs["gqa"] and q.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k, v = np.repeat(k, repeat, axis=-3), np.repeat(v, repeat, axis=-3)
    scale = attrs["scale"] if attrs["scale"] is not None else 1.0 / np.sqrt(q.shape[-1])
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * q.dtype.type(scale)
    if attrs["causal"]:
        keep = np.tril(np.ones((q.shape[-2], k.shape[-2]), dtype=bool))
        scores = np.where(keep, scores, q.dtype.type(-np.inf))
    if len(a) == 4:
        mask = a[3]
        scores = np.where(mask, scores, q.dtype.type(-np.inf)) if mask.dtype == bool else scores + mask
    dead = np.isneginf(scores.max(axis=-1, keepdims=True))  # rows with every key masked give zeros, as torch
    weights = np.where(dead, q.dtype.type(0), softmax(np.where(dead, q.dtype.type(0), scores), -1))
    return np.matmul(weights, v)


def _same_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return [types[0]]


def trailing_reduced(rank: int, attrs: Mapping[str, Any]) -> tuple[int, ...]:
    """The last ``normalized_ndim`` axes (layer_norm, rms_norm)."""
    return tuple(range(rank - attrs["normalized_ndim"], rank))


def _product_flops(operands: Sequence[Sequence[int]], results: Sequence[Sequence[int]],
                   attrs: Mapping[str, Any]) -> int:
    """2 x (result elements) x (the contracted length, operand 0's last dim): matmul, linear, qlinear."""
    return 2 * int(np.prod(results[0])) * int(operands[0][-1])


def _attention_flops(operands: Sequence[Sequence[int]], results: Sequence[Sequence[int]],
                     attrs: Mapping[str, Any]) -> int:
    """q @ k^T and p @ v: 4 x (query rows) x (keys) x (head dim); half of it under a causal mask."""
    q, k = operands[0], operands[1]
    full = 4 * int(np.prod(q[:-1])) * int(k[-2]) * int(q[-1])
    return full // 2 if attrs.get("causal") else full


DEFS = [
    OpDef("matmul", ("lhs", "rhs"), _matmul_infer, lambda a, at: np.matmul(a[0], a[1]), Category.LIBRARY,
          "batched matrix product with broadcast batch dims", flops=_product_flops),
    OpDef("linear", ("x", "weight", "bias?"), _linear_infer, _linear_ref, Category.LIBRARY,
          "x @ weight^T + bias, weight is [out, in]", flops=_product_flops),
    OpDef("layer_norm", ("x", "weight?", "bias?"), _norm_infer("layer_norm"), layer_norm, Category.REDUCTION,
          "normalise the last normalized_ndim dims to zero mean, unit variance; then scale and shift",
          {"normalized_ndim": AttrSpec("int", 1), "eps": AttrSpec("float", 1e-5)}, reduces=trailing_reduced),
    OpDef("rms_norm", ("x", "weight?"), _norm_infer("rms_norm"), rms_norm, Category.REDUCTION,
          "x / sqrt(mean(x^2) + eps) * weight over the last normalized_ndim dims",
          {"normalized_ndim": AttrSpec("int", 1), "eps": AttrSpec("float", 1e-6)}, reduces=trailing_reduced),
    OpDef("embedding", ("weight", "indices"), _embedding_infer, _embedding_ref, Category.POINTWISE,
          "rows of weight picked by integer indices", remapped=(0,)),
    OpDef("attention", ("q", "k", "v", "mask?"), _attention_infer, attention, Category.LIBRARY,
          "scaled dot-product attention over [..., heads, tokens, dim]; bool mask keeps True, float mask is added; "
          "a query with every key masked gives zeros (as torch)",
          {"causal": AttrSpec("bool", False), "scale": AttrSpec("float?", None), "gqa": AttrSpec("bool", False)},
          flops=_attention_flops),
    OpDef("dropout", ("x",), _same_infer, lambda a, at: a[0], Category.VIEW,
          "inference-mode dropout: the identity", {"p": AttrSpec("float", 0.0)}),
    OpDef("identity", ("x",), _same_infer, lambda a, at: a[0], Category.VIEW, "returns its operand"),
]
