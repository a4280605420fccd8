"""newton (SNLP, Identity Newton): a residual layer stack becomes one ``newton`` op.

``newton{iters=K,chunk=C,granularity=block|sublayer}`` finds the residual chains
(``passes/layers.py``) and replaces each by a ``newton`` op: one region per distinct layer
structure (a layer body over one layer's weights, yielding f(h)), each structure's weights
stacked along a layer axis as operands, and the iteration (K), chunking (C, 0 = the whole
chain) and the layer -> body pattern as attributes; ``lamina dump --after newton`` shows it. Semantics in the
op's doc (``ir/ops/structural.py``): K = C reproduces the sequential stack.

``newton-expand`` (``newton_expand.py``) lowers the op for the backends.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..ir.builder import OpEmitter, RegionBuilder
from ..ir.core import Graph, Loc, Op, Region, Value
from ..ir.errors import LaminaError
from .layers import Chain, Layer, find_chains
from .rewrite import remove_dead
from .toolkit import ValueMap, producers


@dataclass(frozen=True)
class NewtonOptions:
    """iters: Newton iterations per chunk (the most, with tol); chunk: layers per chunk (0: all);
    granularity: block or sublayer; tol: stop a chunk once the update's relative norm is under it (0: off)."""

    iters: int = 1
    chunk: int = 0
    granularity: str = "block"
    min_layers: int = 2
    tol: float = 0.0

    def __post_init__(self) -> None:
        if self.iters < 1 or self.chunk < 0 or self.min_layers < 1 or self.tol < 0:
            raise LaminaError(f"newton needs iters >= 1, chunk >= 0, min_layers >= 1, tol >= 0; got {self}")
        if self.granularity not in ("block", "sublayer"):
            raise LaminaError(f"newton granularity must be 'block' or 'sublayer', got {self.granularity!r}")


def newton(graph: Graph, options: NewtonOptions = NewtonOptions()) -> Graph:
    """Replace each residual chain of ``graph`` by a ``newton`` op (see module doc)."""
    chains = find_chains(graph, options.granularity, options.min_layers)
    if not chains:
        return graph
    removed = {id(op) for chain in chains for layer in chain.layers for op in layer.ops}
    at_end = {id(chain.layers[-1].ops[-1]): chain for chain in chains}
    out = OpEmitter()
    producer = producers(graph.ops)
    values = ValueMap()
    waiting: set[Value] = set()  # values of chains whose newton op comes later, and of ops deferred after it
    deferred: list[Op] = []
    for op in graph.ops:
        if id(op) in at_end:
            chain = at_end[id(op)]
            results = _newton_op(chain, options, out, producer)
            exported = [v for layer in chain.layers for v in layer.exports]
            for old, new in zip([chain.layers[-1].out, *exported], results):
                values[old] = new
            for d in deferred:  # cache updates between the chain's layers, now that their inputs exist
                out.append(values.op(d))
            deferred, waiting = [], set()
        elif id(op) in removed:
            waiting.update(op.results)
        elif any(v in waiting for v in op.operands):
            deferred.append(op)
            waiting.update(op.results)
        else:  # ops after a chain may read its exports
            out.append(values.op(op))
    outputs = values.values(graph.outputs)
    # per-layer views the stacks replaced (x[l] of a stacked cache) are left unread
    return graph.replace(ops=tuple(remove_dead(out.ops, outputs)), outputs=outputs)


def _newton_op(chain: Chain, options: NewtonOptions, out: OpEmitter, producer: dict[Value, Op]) -> tuple[Value, ...]:
    pattern = chain.structures()
    loc = chain.layers[-1].ops[-1].loc
    contexts: list[Value] = []
    for layer in chain.layers:
        for c in layer.context:
            if all(c is not x for x in contexts):
                contexts.append(c)
    stacks: list[Value] = []
    regions = []
    for b in range(max(pattern) + 1):
        layers = [layer for layer, p in zip(chain.layers, pattern) if p == b]
        regions.append(_body(layers[0], contexts))
        stacks += [_stacked([layer.params[i] for layer in layers], out, producer, loc)
                   for i in range(len(layers[0].params))]
    chunk = options.chunk or len(chain.layers)
    attrs = {"iters": options.iters, "chunk": chunk, "pattern": pattern, "contexts": len(contexts), "init": "input",
             "tol": float(options.tol)}
    return out.emit_op("newton", [chain.layers[0].stream, *contexts, *stacks], attrs, loc, regions).results


def _stacked(values: Sequence[Value], out: OpEmitter, producer: dict[Value, Op], loc: Loc) -> Value:
    """``values`` stacked along a new leading axis: rows of one tensor x[i] (a layer's past keys) as a
    slice of x (a view), others by a ``stack`` op (of weights: computed once per plan)."""
    rows = [_row_of(v, producer) for v in values]
    if all(r is not None and r[0] is rows[0][0] for r in rows):  # type: ignore[index]
        index = [r[1] for r in rows]  # type: ignore[index]
        step = index[1] - index[0] if len(index) > 1 else 1
        if step > 0 and all(b - a == step for a, b in zip(index, index[1:])):
            return out.emit("slice", rows[0][0], dim=0, start=index[0], end=index[-1] + 1, step=step, loc=loc)  # type: ignore[index]
    return out.emit("stack", *values, dim=0, loc=loc)


def _row_of(v: Value, producer: dict[Value, Op]) -> tuple[Value, int] | None:
    """(x, i) when ``v`` is ``x[i]``: a one-row slice along dim 0, then a reshape dropping that dim."""
    op = producer.get(v)
    if op is None or op.name != "reshape":
        return None
    inner = producer.get(op.operands[0])
    if inner is None or inner.name != "slice" or inner.attrs["dim"] != 0 or inner.attrs["step"] != 1:
        return None
    start, end, x = inner.attrs["start"], inner.attrs["end"], inner.operands[0]
    if not isinstance(start, int) or end != start + 1 or tuple(x.type.shape[1:]) != tuple(v.type.shape):
        return None
    return x, start


def _body(layer: Layer, contexts: Sequence[Value]) -> Region:
    """One layer as a region (h, contexts..., weights...) -> (f(h), exports...)."""
    builder = RegionBuilder([layer.stream.type] + [c.type for c in contexts] + [p.type for p in layer.params])
    h = builder.args[0]
    values = ValueMap()
    for old, arg in zip([layer.stream, *contexts, *layer.params], builder.args):
        values[old] = arg
    last = layer.ops[-1]
    single_residual = last.name == "add" and sum(op.name == "add" and layer.stream in op.operands
                                                 for op in layer.ops) == 1 and layer.stream in last.operands
    body_ops = layer.ops[:-1] if single_residual else layer.ops
    for op in body_ops:
        values.replace_results(op, builder.append_copy(op, values.values(op.operands)).results)
    if single_residual:  # h + delta: yield delta as computed, so iters = chunk is exact
        delta = last.operands[1] if last.operands[0] is layer.stream else last.operands[0]
        result = values[delta]
    else:  # a block: f(h) = block(h) - h
        result = builder.emit("sub", values[layer.out], h, loc=last.loc)
    return builder.finish([result, *values.values(layer.exports)])
