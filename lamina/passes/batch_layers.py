"""Batch a layer body over a leading layer axis (a vmap of the region), for ``newton-expand``.

``inline_batched(region, args, batched, n, out)`` emits ``region``'s ops into ``out`` so that
arguments marked batched carry a new leading axis of ``n`` layers (their inputs, stacked
weights) and the others are shared by every layer (masks, rotary tables). Each op gets a
rule: elementwise ops broadcast (a batched operand of lower rank gets 1s after the layer
axis), views and reductions shift their dims by one, a linear over stacked weights becomes a
batched matmul, a norm with stacked weights normalises and then scales by the broadcast
weights, attention folds the layer axis into the batch. An op with no rule raises
``BatchingError``, and the caller evaluates those layers one at a time instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..ir.builder import OpEmitter
from ..ir.core import Op, Region, Value
from ..ir.opdef import Category
from ..ir.ops import lookup
from ..ir.shapes import numel
from ..ir.targets import NoLowering, OpTable


class BatchingError(NoLowering):
    """An op of a layer body that ``inline_batched`` has no rule for."""


@dataclass(frozen=True)
class _Val:
    value: Value
    batched: bool


Rule = Callable[["_Batcher", Op, list[_Val]], list[_Val]]
# op -> how it runs on a layer-batched operand (a leading layer axis); elementwise ops need no entry
BATCHING: OpTable[Rule] = OpTable("newton layer batching", "batching rule", error=BatchingError)


def inline_batched(region: Region, args: Sequence[Value], batched: Sequence[bool], n: int,
                   out: OpEmitter) -> list[Value]:
    """Emit ``region`` over ``args`` with a layer axis of ``n`` on the batched ones; its results, batched."""
    scratch = OpEmitter()  # emitted into ``out`` only when every op has a rule
    env = {a: _Val(v, b) for a, v, b in zip(region.args, args, batched)}
    batcher = _Batcher(scratch, n)
    for op in region.ops[:-1]:
        results = batcher.op(op, [env[v] for v in op.operands])
        env.update(zip(op.results, results))
    values = [batcher.batched(env[v], region.ops[-1]) for v in region.results]
    out.ops.extend(scratch.ops)
    return values


class _Batcher:
    def __init__(self, out: OpEmitter, n: int) -> None:
        self.out, self.n = out, n

    def emit(self, op: Op, name: str, operands: Sequence[Value], **attrs) -> Value:
        return self.out.emit_op(name, operands, attrs, op.loc).result

    def batched(self, x: _Val, op: Op) -> Value:
        """``x`` with the layer axis, broadcasting a shared value."""
        return x.value if x.batched else self.emit(op, "expand", [x.value], shape=[self.n, *x.value.type.shape])

    def padded(self, op: Op, x: _Val, rank: int) -> Value:
        """A batched ``x`` with 1s after the layer axis up to ``rank`` dims besides it."""
        inner = x.value.type.shape[1:]
        if len(inner) >= rank:
            return x.value
        return self.emit(op, "reshape", [x.value], shape=[self.n, *([1] * (rank - len(inner))), *inner])

    def op(self, op: Op, xs: list[_Val]) -> list[_Val]:
        if not any(x.batched for x in xs):  # shared: the same for every layer
            new = self.out.append_copy(op, [x.value for x in xs])
            return [_Val(r, False) for r in new.results]
        if op.name not in BATCHING and lookup(op.name).category is Category.ELEMENTWISE:
            return self.elementwise(op, xs)
        return BATCHING.get(op.name, f"newton cannot batch {op.describe()}")(self, op, xs)

    @BATCHING.register("tril", "triu", "identity", "dropout")  # act on trailing dims or element by element
    def elementwise(self, op: Op, xs: list[_Val]) -> list[_Val]:
        rank = op.results[0].type.rank if op.results else 0
        operands = [self.padded(op, x, rank) if x.batched else x.value for x in xs]
        return self.single(op, op.name, operands, dict(op.attrs))

    def with_attrs(self, op: Op, xs: list[_Val], **attrs: Any) -> list[_Val]:
        """``op`` on its batched first operand, with attributes shifted past the layer axis."""
        if not xs[0].batched:
            raise BatchingError(f"newton: {op.describe()} reads a per-layer value where no rule batches it")
        new = self.out.emit_op(op.name, [x.value for x in xs], {**op.attrs, **attrs}, op.loc)
        return [_Val(r, True) for r in new.results]

    @BATCHING.register("reshape", "expand")
    def reshaped(self, op: Op, xs: list[_Val]) -> list[_Val]:
        return self.with_attrs(op, xs, shape=[self.n, *op.attrs["shape"]])

    @BATCHING.register("permute")
    def permuted(self, op: Op, xs: list[_Val]) -> list[_Val]:
        rank = op.results[0].type.rank
        return self.with_attrs(op, xs, dims=[0, *(d % rank + 1 for d in op.attrs["dims"])])

    @BATCHING.register("slice", "split", "softmax", "log_softmax", "cumsum", "argmax")
    def shift_dim(self, op: Op, xs: list[_Val]) -> list[_Val]:
        return self.with_attrs(op, xs, dim=op.attrs["dim"] % max(op.operands[0].type.rank, 1) + 1)

    @BATCHING.register("concat")
    def concat(self, op: Op, xs: list[_Val]) -> list[_Val]:
        dim = op.attrs["dim"] % max(op.operands[0].type.rank, 1) + 1
        return self.single(op, op.name, [self.batched(x, op) for x in xs], {**op.attrs, "dim": dim})

    @BATCHING.register("sum", "mean", "amax", "amin", "var")
    def shift_dims(self, op: Op, xs: list[_Val]) -> list[_Val]:
        r, dims = op.operands[0].type.rank, op.attrs["dims"]
        return self.with_attrs(op, xs, dims=[d % r + 1 for d in dims] if dims else list(range(1, r + 1)))

    def single(self, op: Op, name: str, operands: Sequence[Value], attrs: dict) -> list[_Val]:
        return [_Val(self.out.emit_op(name, operands, attrs, op.loc).result, True)]

    @BATCHING.register("layer_norm", "rms_norm")
    def norm(self, op: Op, xs: list[_Val]) -> list[_Val]:
        x, *affine = xs
        if not any(a.batched for a in affine):
            return self.single(op, op.name, [self.batched(x, op), *(a.value for a in affine)], dict(op.attrs))
        y = self.emit(op, op.name, [x.value], **op.attrs)  # a shared x is normalised once
        rank = op.results[0].type.rank
        for a, fn in zip(affine, ("mul", "add")):
            y = self.emit(op, fn, [y, self.padded(op, a, rank) if a.batched else a.value])
        return [_Val(y, True)]

    @BATCHING.register("linear")
    def linear(self, op: Op, xs: list[_Val]) -> list[_Val]:
        x, w, *bias = xs
        if not w.batched and not any(b.batched for b in bias):  # shared weights: a plain linear
            return self.single(op, "linear", [x.value, w.value, *(b.value for b in bias)], {})
        lead, k = op.operands[0].type.shape[:-1], op.operands[0].type.shape[-1]
        # a shared x is one [M, K] matrix that the batched matmul broadcasts over the layers
        flat = self.emit(op, "reshape", [x.value], shape=[self.n, numel(lead), k] if x.batched else [numel(lead), k])
        wt = self.emit(op, "permute", [self.batched(w, op)], dims=[0, 2, 1])
        y = self.emit(op, "matmul", [flat, wt])
        y = self.emit(op, "reshape", [y], shape=[self.n, *lead, w.value.type.shape[-2]])
        for b in bias:
            y = self.emit(op, "add", [y, self.padded(op, b, len(lead) + 1) if b.batched else b.value])
        return [_Val(y, True)]

    @BATCHING.register("matmul")
    def matmul(self, op: Op, xs: list[_Val]) -> list[_Val]:
        a, b = xs
        if min(v.value.type.rank - v.batched for v in xs) < 2:
            raise BatchingError(f"newton: no layer-batching rule for a vector {op.describe()}")
        rank = op.results[0].type.rank
        operands = [self.padded(op, v, rank) if v.batched else v.value for v in (a, b)]
        return self.single(op, "matmul", operands, {})

    @BATCHING.register("attention")
    def attention(self, op: Op, xs: list[_Val]) -> list[_Val]:
        q, k, v, *mask = xs
        if op.results[0].type.rank != 4:
            raise BatchingError(f"newton: layer-batching needs 4-d attention, {op.describe()} is not")
        folded = []
        for t in (q, k, v):
            t4 = self.batched(t, op)
            folded.append(self.emit(op, "reshape", [t4], shape=[-1, *t4.type.shape[2:]]))
        if mask:
            m = mask[0]
            if m.batched or (m.value.type.rank == 4 and m.value.type.shape[0] != 1):
                m4 = self.padded(op, m, 4) if m.batched else self.emit(op, "reshape", [m.value], shape=[1, *m.value.type.shape])
                full = [self.n, q.value.type.shape[-4] if not q.batched else q.value.type.shape[1], *m4.type.shape[2:]]
                m4 = self.emit(op, "expand", [m4], shape=full)
                folded.append(self.emit(op, "reshape", [m4], shape=[-1, *full[2:]]))
            else:
                folded.append(m.value)
        y = self.emit(op, "attention", folded, **op.attrs)
        return [_Val(self.emit(op, "reshape", [y], shape=[self.n, *op.results[0].type.shape]), True)]
