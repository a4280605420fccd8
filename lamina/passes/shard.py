"""shard{tp=N}: Megatron tensor parallelism: each rank computes its share of every attention and MLP sublayer.

Per sublayer of the longest residual chain (``passes/layers.py``), when its update is a ``linear`` of a
weight (the *row* linear: attention's output projection, the MLP's down projection), the linears of
weights that feed it from the sublayer's input are *column* linears (queries, keys, values; the MLP's up
and gate projections). A column linear's weight is cut along its output features (``Shard(0, N)``; a fused
query-key-value weight in three blocks, each cut alike), the row linear's along its input features
(``Shard(1, N)``), so each rank computes whole heads and a slice of the MLP width; the row linear's
partial products are summed by one ``all_reduce`` per sublayer, and its bias is added after the sum.

Between them, every value derived from a column linear is *cut* along one axis, which the ops carry:
elementwise ops (a broadcast operand of size 1 there stays whole; a weight of the full size there is cut
too), reshapes (the cut axis must lead its group: features into heads, heads merged back; grouped-query
attention's repeated key-value heads follow their query heads when N divides the key-value heads),
permutes, expands, splits (along the cut axis: the equal parts are the blocks of a fused weight),
concatenations along other axes, and attention (heads on axis 1). Any other op reading a cut value, or a
size the ranks cannot share equally, is a ``ShardError`` naming the op and its module.

KV caches are split by heads: a layer's new keys and values leave it cut (and stay cut through stacks
and views), so the graph's cache outputs are this rank's heads; a graph input that a layer combines with
cut keys (the past cache, through slices and reshapes) becomes cut along that axis, and each rank passes
its own part back. The history names the split inputs and outputs.

Embeddings, norms and the LM head are replicated: each rank holds them whole (simple, and they are a small
part of a step). The graph is the same on every rank (SPMD); a ``Param``'s ``shard`` says which part of the
whole weight a rank loads (``Shard.take(weight, rank)``, done by ``lamina.distributed.compile``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sympy

from ..ir.builder import OpEmitter
from ..ir.core import Graph, Op, Param, Shard, Value
from ..ir.errors import LaminaError
from ..ir.ops import category
from ..ir.opdef import Category
from ..ir.shapes import dim
from ..ir.types import TensorType
from .layers import Layer, find_chains
from .toolkit import nbytes


class ShardError(LaminaError, ValueError):
    """A graph the shard pass cannot split across ranks; the message names the op or the option."""


@dataclass(frozen=True)
class ShardOptions:
    """tp: the number of ranks (tensor-parallel degree)."""

    tp: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.tp, int) or self.tp < 1:
            raise ShardError(f"shard: tp={self.tp!r} must be a positive number of ranks")


@dataclass
class _Origin:
    """The column-linear weights (and biases) a cut value comes from; a split along the cut axis fixes
    how many blocks they have."""

    params: list[Value] = field(default_factory=list)
    blocks: int | None = None


@dataclass(frozen=True)
class _Cut:
    axis: int
    origin: _Origin | None = None  # set while the blocks are still open (straight out of a column linear)


def shard(graph: Graph, options: ShardOptions = ShardOptions()) -> Graph:
    """Split ``graph``'s attention and MLP sublayers across ``options.tp`` ranks (see the module doc)."""
    if options.tp == 1:
        return graph
    chains = find_chains(graph, "sublayer", min_layers=1)
    if not chains:
        raise ShardError(f"shard: graph @{graph.name} has no residual layer stack (h + f(h)) to split across ranks")
    chain = max(chains, key=lambda c: len(c.layers))
    inputs: dict[Value, int] = {}
    for _ in range(len(graph.inputs) + 1):  # each round finds one input a layer reads split (its KV cache)
        try:
            return _Sharder(graph, options.tp, chain.layers, inputs).run()
        except _InputCut as found:
            inputs[found.input] = found.axis
    raise AssertionError("unreachable: every input is cut at most once")


class _InputCut(Exception):
    """A layer combines a split value with a graph input (through views) whole along the split axis."""

    def __init__(self, input: Value, axis: int) -> None:
        super().__init__(f"input {input.hint} split along dim {axis}")
        self.input, self.axis = input, axis


class _Sharder:
    def __init__(self, graph: Graph, tp: int, layers: Sequence[Layer], inputs: dict[Value, int]) -> None:
        self.g, self.n = graph, tp
        self.inputs = inputs  # graph input -> the dim it is split along (each rank passes its part)
        self.params = {p.value: p for p in graph.params}
        self.rows: dict[int, Layer] = {}  # id(row linear) -> its sublayer
        self.body: dict[int, Layer] = {}
        for layer in layers:
            row = self._row_linear(layer)
            if row is not None:
                self.rows[id(row)] = layer
                self.body.update({id(op): layer for op in layer.ops})
        if not self.rows:
            raise ShardError(f"shard: no sublayer of @{graph.name} ends in a linear of a weight (attention's output "
                             "projection, an MLP's down projection) to split across ranks")
        self.out = OpEmitter()
        self.values: dict[Value, Value] = {}
        self.cuts: dict[Value, _Cut] = {}
        self.param_cuts: dict[Value, tuple[int, _Origin | None]] = {}  # old param value -> (dim, origin)
        self.new_params: dict[Value, Value] = {}
        self.producer = {r: op for op in graph.ops for r in op.results}
        for v, axis in inputs.items():
            shape = list(v.type.shape)
            shape[axis] = self._part(None, shape[axis])
            self.values[v] = Value(TensorType(tuple(shape), v.type.dtype), v.hint)
            self.cuts[v] = _Cut(axis)

    def _row_linear(self, layer: Layer) -> Op | None:
        add = layer.ops[-1]
        delta = add.operands[1] if add.operands[0] is layer.stream else add.operands[0]
        producer = next((op for op in layer.ops if delta in op.results), None)
        if producer is not None and producer.name == "linear" and producer.operands[1] in self.params:
            return producer
        return None

    # --- the rewrite ---------------------------------------------------------------------------------
    def run(self) -> Graph:
        for op in self.g.ops:
            operands = [self.value(v) for v in op.operands]
            if id(op) in self.body:
                self.rewrite(op, operands)
            elif any(v in self.cuts for v in op.operands):  # views of a split cache, the caches stacked
                if op.name not in ("slice", "reshape", "permute", "stack"):
                    raise self.error(op, "reads a value split across ranks outside its sublayer, and only views "
                                         "and stacks of KV caches may")
                self.rewrite(op, operands)
            else:
                self.out.append(op.replace(operands=tuple(operands)))
        params = tuple(self._param(p) for p in self.g.params)
        outputs = tuple(self.value(v) for v in self.g.outputs)
        split_out = [f"{i} (dim {self.cuts[v].axis})" for i, v in enumerate(self.g.outputs) if v in self.cuts]
        split_in = [f"{v.hint} (dim {a})" for v, a in self.inputs.items()]
        per_rank, whole = sum(nbytes(p.value) for p in params), sum(nbytes(p.value) for p in self.g.params)
        note = (f"shard: tp={self.n}, {len(self.rows)} sublayers split (one all_reduce each); "
                f"{sum(1 for p in params if p.shard)} weights cut, the rest replicated; "
                f"{per_rank / 1e6:.2f} MB of weights per rank ({whole / 1e6:.2f} MB whole)"
                + (f"; each rank passes its part of inputs {', '.join(split_in)}" if split_in else "")
                + (f"; and gets its part of outputs {', '.join(split_out)}" if split_out else ""))
        return self.g.replace(inputs=tuple(self.value(v) for v in self.g.inputs), ops=tuple(self.out.ops),
                              params=params, outputs=outputs, history=self.g.history + (note,))

    def value(self, v: Value) -> Value:
        return self.new_params.get(v) or self.values.get(v, v)

    def _param(self, p: Param) -> Param:
        if p.value not in self.param_cuts:
            return p
        axis, origin = self.param_cuts[p.value]
        blocks = (origin.blocks or 1) if origin is not None else 1
        return Param(p.key, self.new_params[p.value], Shard(axis, self.n, blocks))

    def cut_param(self, op: Op, v: Value, axis: int, origin: _Origin | None) -> Value:
        """``v`` (a weight) cut along ``axis``: its new, smaller value."""
        if v in self.param_cuts:
            if self.param_cuts[v][0] != axis:
                raise self.error(op, f"needs weight {self.params[v].key} cut along dim {axis}, another op along "
                                     f"dim {self.param_cuts[v][0]}")
            return self.new_params[v]
        size = v.type.shape[axis]
        if not isinstance(size, int) or size % self.n:
            raise self.error(op, f"weight {self.params[v].key} ({v.type}) has {size} along dim {axis}, which "
                                 f"tp={self.n} does not divide")
        shape = list(v.type.shape)
        shape[axis] = size // self.n
        self.new_params[v] = Value(TensorType(tuple(shape), v.type.dtype), v.hint)
        self.param_cuts[v] = (axis, origin)
        if origin is not None:
            origin.params.append(v)
        return self.new_params[v]

    def error(self, op: Op, message: str) -> ShardError:
        return ShardError(f"shard{{tp={self.n}}}: {op.describe()} {message}")

    def emit(self, op: Op, operands: Sequence[Value], attrs: dict | None = None, cut: _Cut | None = None,
             cuts: Sequence[_Cut | None] | None = None) -> Op:
        new = self.out.emit_op(op.name, operands, attrs if attrs is not None else dict(op.attrs), op.loc)
        for i, (old, fresh) in enumerate(zip(op.results, new.results)):
            self.values[old] = fresh
            c = cuts[i] if cuts is not None else cut
            if c is not None:
                self.cuts[old] = c
        return new

    def rewrite(self, op: Op, operands: list[Value]) -> None:
        cuts = [self.cuts.get(v) for v in op.operands]
        if id(op) in self.rows:
            return self.row(op, operands, cuts)
        if op.name == "linear" and op.operands[1] in self.params and cuts[0] is None:
            return self.column(op, operands)
        if not any(cuts):
            self.emit(op, operands)
            return
        rule = getattr(self, f"rule_{op.name}", None)
        if rule is None and category(op.name) is Category.ELEMENTWISE:
            rule = self.rule_elementwise
        if rule is None:
            raise self.error(op, "reads a value split across ranks and has no sharding rule")
        rule(op, operands, cuts)

    # --- linears -------------------------------------------------------------------------------------
    def column(self, op: Op, operands: list[Value]) -> None:
        origin = _Origin()
        weight = self.cut_param(op, op.operands[1], 0, origin)
        rest = [self.cut_param(op, op.operands[2], 0, origin)] if len(op.operands) == 3 else []
        self.emit(op, [operands[0], weight, *rest], cut=_Cut(op.results[0].type.rank - 1, origin))

    def row(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        x = op.operands[0]
        if cuts[0] is None or cuts[0].axis != x.type.rank - 1:
            raise self.error(op, "is the sublayer's output projection but its input is not split along its features")
        self._close(cuts[0])
        weight = self.cut_param(op, op.operands[1], 1, None)
        partial = self.out.emit("linear", operands[0], weight, loc=op.loc)
        total = self.out.emit("all_reduce", partial, group=self.n, loc=op.loc)
        if len(op.operands) == 3:
            total = self.out.emit("add", total, operands[2], loc=op.loc)
        self.values[op.results[0]] = total

    @staticmethod
    def _close(cut: _Cut | None) -> None:
        """A cut whose blocks are still open is used as one block."""
        if cut is not None and cut.origin is not None and cut.origin.blocks is None:
            cut.origin.blocks = 1

    # --- rules: how a cut passes through an op -------------------------------------------------------
    def rule_elementwise(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        rank = op.results[0].type.rank
        axes = {c.axis + rank - v.type.rank for c, v in zip(cuts, op.operands) if c is not None}
        if len(axes) != 1:
            raise self.error(op, f"combines values split along different axes {sorted(axes)}")
        axis = axes.pop()
        for c in cuts:
            self._close(c)
        new = list(operands)
        for i, (v, c) in enumerate(zip(op.operands, cuts)):
            at = axis - (rank - v.type.rank)
            if c is not None or at < 0 or v.type.shape[at] == 1:
                continue
            if v in self.params:
                new[i] = self.cut_param(op, v, at, None)
            else:
                self.need_input(op, v, at)
        self.emit(op, new, cut=_Cut(axis))

    def rule_permute(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        self._close(cuts[0])
        self.emit(op, operands, cut=_Cut(list(op.attrs["dims"]).index(cuts[0].axis)))

    def rule_expand(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        self._close(cuts[0])
        shape = list(op.attrs["shape"])
        axis = cuts[0].axis + len(shape) - op.operands[0].type.rank
        shape[axis] = self._part(op, shape[axis])
        self.emit(op, operands, {**op.attrs, "shape": shape}, cut=_Cut(axis))

    def rule_reshape(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        self._close(cuts[0])
        before, after = op.operands[0].type.shape, list(op.attrs["shape"])
        group = _groups(before, after)
        axis = cuts[0].axis
        matches = [(ins, outs) for ins, outs in group if axis in ins]
        if not matches or matches[0][0][0] != axis or not matches[0][1]:
            raise self.error(op, f"reshapes {list(before)} to {after} but the split axis {axis} does not lead a "
                                 "group of dims it maps to")
        target = matches[0][1][0]
        after[target] = self._part(op, after[target])
        self.emit(op, operands, {**op.attrs, "shape": after}, cut=_Cut(target))

    def rule_split(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        cut, axis = cuts[0], op.attrs["dim"] % op.operands[0].type.rank
        if axis != cut.axis:
            self.emit(op, operands, cut=_Cut(cut.axis, cut.origin))
            return
        sizes = list(op.attrs["sizes"])
        if cut.origin is None or cut.origin.blocks is not None or len(set(sizes)) != 1:
            raise self.error(op, f"splits the split axis into {sizes}: only a fused weight's equal blocks can be "
                                 "split there")
        cut.origin.blocks = len(sizes)
        self.emit(op, operands, {**op.attrs, "sizes": [self._part(op, s) for s in sizes]}, cut=_Cut(axis))

    def need_input(self, op: Op, v: Value, axis: int) -> None:
        """``v``, whole along ``axis``, meets a split value: split the graph input it views (a KV cache), or fail."""
        while v not in self.inputs:
            if v in self.g.inputs:
                raise _InputCut(v, axis)
            producer = self.producer.get(v)
            if producer is None or producer.name not in ("slice", "reshape", "permute") or \
                    (producer.name == "slice" and producer.attrs["dim"] == axis):
                break
            source = producer.operands[0]
            if producer.name == "permute":
                axis = producer.attrs["dims"][axis]
            elif producer.name == "reshape":
                group = [ins for ins, outs in _groups(source.type.shape, v.type.shape) if outs and outs[0] == axis]
                if not group or not group[0]:
                    break
                axis = group[0][0]
            v = source
        raise self.error(op, f"combines a split value with {v.type}, whole along the split axis {axis}")

    def rule_slice(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        self._close(cuts[0])
        if op.attrs["dim"] % op.operands[0].type.rank == cuts[0].axis:
            raise self.error(op, "slices along the axis split across ranks")
        self.emit(op, operands, cut=_Cut(cuts[0].axis))

    def rule_stack(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        if any(c is None for c in cuts) or len({c.axis for c in cuts}) != 1:
            raise self.error(op, "stacks values that are not all split along one axis")
        axis, at = cuts[0].axis, op.attrs["dim"] % (op.operands[0].type.rank + 1)
        self.emit(op, operands, cut=_Cut(axis + 1 if at <= axis else axis))

    def rule_concat(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        for v, c in zip(op.operands, cuts):
            if c is None and cuts and any(cuts):
                axis = next(c.axis for c in cuts if c is not None)
                if v.type.shape[axis] != 1:
                    self.need_input(op, v, axis)
        if any(c is None for c in cuts) or len({c.axis for c in cuts}) != 1 or cuts[0].axis == op.attrs["dim"]:
            raise self.error(op, "concatenates values that are not all split along one other axis")
        for c in cuts:
            self._close(c)
        self.emit(op, operands, cut=_Cut(cuts[0].axis))

    def rule_attention(self, op: Op, operands: list[Value], cuts: list[_Cut | None]) -> None:
        if any(c is None or c.axis != 1 for c in cuts[:3]) or (len(cuts) > 3 and cuts[3] is not None):
            raise self.error(op, "needs queries, keys and values split along the heads (axis 1) and a whole mask")
        for c in cuts[:3]:
            self._close(c)
        self.emit(op, operands, cut=_Cut(1))

    def _part(self, op: Op | None, size: object) -> object:
        if isinstance(size, int):
            if size % self.n:
                if op is None:
                    raise ShardError(f"shard{{tp={self.n}}}: an input split along its heads has {size} of them, "
                                     f"which tp={self.n} does not divide")
                raise self.error(op, f"has {size} along the split axis, which tp={self.n} does not divide (heads, "
                                     "key-value heads and the MLP width must be multiples of tp)")
            return size // self.n
        return dim(sympy.sympify(size) / self.n)


def _groups(before: Sequence[object], after: Sequence[object]) -> list[tuple[list[int], list[int]]]:
    """The dims of a reshape in groups with equal products: (input axes, output axes); size-1 dims alone."""
    out: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(before) or j < len(after):
        if i < len(before) and j < len(after) and sympy.sympify(before[i]) == sympy.sympify(after[j]):
            out.append(([i], [j]))
            i, j = i + 1, j + 1
            continue
        if j < len(after) and after[j] == 1:
            out.append(([], [j]))
            j += 1
            continue
        if i < len(before) and before[i] == 1:
            out.append(([i], []))
            i += 1
            continue
        ins, outs = [i], [j]
        a, b = sympy.sympify(before[i]), sympy.sympify(after[j])
        i, j = i + 1, j + 1
        while sympy.simplify(a - b) != 0 and (i < len(before) or j < len(after)):
            if (b.is_number and a.is_number and a < b) or j >= len(after):
                a, i = a * before[i], i + 1
                ins.append(i - 1)
            else:
                b, j = b * after[j], j + 1
                outs.append(j - 1)
        out.append((ins, outs))
    return out

