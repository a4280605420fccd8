"""newton (SNLP, Identity Newton): a residual layer stack becomes one ``newton`` op.

``newton{iters=K,chunk=C,granularity=block|sublayer}`` finds the residual chains
(``passes/layers.py``) and replaces each by a ``newton`` op: one region per distinct layer
structure (a layer body over one layer's weights, yielding f(h)), the weights of every
layer as operands, and the iteration (K), chunking (C, 0 = the whole chain) and the layer
-> body pattern as attributes; ``lamina dump --after newton`` shows it. Semantics in the
op's doc (``ir/ops/structural.py``): K = C reproduces the sequential stack.

``newton-expand`` (``newton_expand.py``) lowers the op for the backends.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..ir.builder import OpEmitter, RegionBuilder
from ..ir.core import Graph, Op, Region, Value
from ..ir.errors import LaminaError
from .layers import Chain, Layer, find_chains


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
    mapping: dict[int, Value] = {}
    waiting: set[int] = set()  # values of chains whose newton op comes later, and of ops deferred after it
    deferred: list[Op] = []
    for op in graph.ops:
        if id(op) in at_end:
            chain = at_end[id(op)]
            results = _newton_op(chain, options, out)
            exported = [v for layer in chain.layers for v in layer.exports]
            for old, new in zip([chain.layers[-1].out, *exported], results):
                mapping[id(old)] = new
            for d in deferred:  # cache updates between the chain's layers, now that their inputs exist
                out.append(d.replace(operands=tuple(mapping.get(id(v), v) for v in d.operands)))
            deferred, waiting = [], set()
        elif id(op) in removed:
            waiting.update(id(r) for r in op.results)
        elif any(id(v) in waiting for v in op.operands):
            deferred.append(op)
            waiting.update(id(r) for r in op.results)
        else:  # ops after a chain may read its exports
            out.append(op.replace(operands=tuple(mapping.get(id(v), v) for v in op.operands)))
    return graph.replace(ops=tuple(out.ops), outputs=tuple(mapping.get(id(v), v) for v in graph.outputs))


def _newton_op(chain: Chain, options: NewtonOptions, out: OpEmitter) -> tuple[Value, ...]:
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
    attrs = {"iters": options.iters, "chunk": chunk, "pattern": pattern, "contexts": len(contexts), "init": "input",
             "tol": float(options.tol)}
    return out.emit_op("newton", operands, attrs, chain.layers[-1].ops[-1].loc, regions).results


def _body(layer: Layer, contexts: Sequence[Value]) -> Region:
    """One layer as a region (h, contexts..., weights...) -> (f(h), exports...)."""
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
    return builder.finish([result, *(env[id(v)] for v in layer.exports)])
