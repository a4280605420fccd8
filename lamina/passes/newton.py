"""newton (SNLP, Identity Newton): a residual layer stack becomes one ``newton`` op.

``newton{iters=K,chunk=C,granularity=block|sublayer}`` finds the residual chains
(``passes/layers.py``) and replaces each by a ``newton`` op: one region per distinct layer
structure (a layer body over one layer's weights, yielding f(h)), the weights of every
layer as operands, and the iteration (K), chunking (C, 0 = the whole chain) and the layer
-> body pattern as attributes; ``lamina dump --after newton`` shows it. Semantics in the
op's doc (``ir/ops/structural.py``): K = C reproduces the sequential stack.

``newton-expand`` lowers each ``newton`` op to plain ops: per chunk and iteration, every
layer body instantiated on its current input, then the prefix sums, so any backend runs it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..ir.builder import OpEmitter, RegionBuilder
from ..ir.core import Graph, Op, Region, Value
from ..ir.errors import LaminaError
from ..ir.ops.structural import newton_schedule
from .layers import Chain, Layer, find_chains


@dataclass(frozen=True)
class NewtonOptions:
    """iters: Newton iterations per chunk; chunk: layers per chunk (0: all); granularity: block or sublayer."""

    iters: int = 1
    chunk: int = 0
    granularity: str = "block"
    min_layers: int = 2

    def __post_init__(self) -> None:
        if self.iters < 1 or self.chunk < 0 or self.min_layers < 1:
            raise LaminaError(f"newton needs iters >= 1, chunk >= 0, min_layers >= 1; got {self}")
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
    mapping: dict[int, Value] = {}
    for op in graph.ops:
        if id(op) in at_end:
            chain = at_end[id(op)]
            mapping[id(chain.layers[-1].out)] = _newton_op(chain, options, out)
        elif id(op) not in removed:
            out.append(op.replace(operands=tuple(mapping.get(id(v), v) for v in op.operands)))
    return graph.replace(ops=tuple(out.ops), outputs=tuple(mapping.get(id(v), v) for v in graph.outputs))


def _newton_op(chain: Chain, options: NewtonOptions, out: OpEmitter) -> Value:
    pattern = chain.structures()
    contexts: list[Value] = []
    for layer in chain.layers:
        for c in layer.context:
            if all(c is not x for x in contexts):
                contexts.append(c)
    templates = {b: next(l for l, p in zip(chain.layers, pattern) if p == b) for b in set(pattern)}
    regions = [_body(templates[b], contexts) for b in range(len(templates))]
    operands = [chain.layers[0].stream, *contexts] + [p for layer in chain.layers for p in layer.params]
    chunk = options.chunk or len(chain.layers)
    attrs = {"iters": options.iters, "chunk": chunk, "pattern": pattern, "contexts": len(contexts), "init": "input"}
    return out.emit_op("newton", operands, attrs, chain.layers[-1].ops[-1].loc, regions).result


def _body(layer: Layer, contexts: Sequence[Value]) -> Region:
    """One layer as a region (h, contexts..., weights...) -> f(h)."""
    builder = RegionBuilder([layer.stream.type] + [c.type for c in contexts] + [p.type for p in layer.params])
    h = builder.args[0]
    env = {id(layer.stream): h}
    env.update({id(c): a for c, a in zip(contexts, builder.args[1:])})
    env.update({id(p): a for p, a in zip(layer.params, builder.args[1 + len(contexts):])})
    last = layer.ops[-1]
    single_residual = last.name == "add" and sum(op.name == "add" and layer.stream in op.operands
                                                 for op in layer.ops) == 1 and layer.stream in last.operands
    body_ops = layer.ops[:-1] if single_residual else layer.ops
    for op in body_ops:
        new = builder.append(op.replace(operands=tuple(env[id(v)] for v in op.operands),
                                        results=tuple(Value(r.type) for r in op.results)))
        env.update({id(o): n for o, n in zip(op.results, new.results)})
    if single_residual:  # h + delta: yield delta as computed, so iters = chunk is exact
        delta = last.operands[1] if last.operands[0] is layer.stream else last.operands[0]
        result = env[id(delta)]
    else:  # a block: f(h) = block(h) - h
        result = builder.emit("sub", env[id(layer.out)], h, loc=last.loc)
    return builder.finish([result])


def newton_expand(graph: Graph) -> Graph:
    """Lower every ``newton`` op to plain ops: K iterations of C layer bodies and prefix sums per chunk."""
    if not any(op.name == "newton" for op in graph.ops):
        return graph
    out = OpEmitter()
    mapping: dict[int, Value] = {}
    for op in graph.ops:
        op = op.replace(operands=tuple(mapping.get(id(v), v) for v in op.operands))
        if op.name == "newton":
            mapping[id(op.results[0])] = _expand(op, out)
        else:
            out.append(op)
    return graph.replace(ops=tuple(out.ops), outputs=tuple(mapping.get(id(v), v) for v in graph.outputs))


def _expand(op: Op, out: OpEmitter) -> Value:
    return newton_schedule(op, op.operands, lambda region, args: _inline(region, args, out),
                           lambda a, b: out.emit("add", a, b, loc=op.loc))


def _inline(region: Region, args: Sequence[Value], out: OpEmitter) -> Value:
    env = {id(a): v for a, v in zip(region.args, args)}
    for op in region.ops[:-1]:
        new = out.append(op.replace(operands=tuple(env[id(v)] for v in op.operands),
                                    results=tuple(Value(r.type) for r in op.results)))
        env.update({id(o): n for o, n in zip(op.results, new.results)})
    return env[id(region.results[0])]
