"""layers (analysis): residual chains ``h[l+1] = h[l] + f_l(h[l])`` and the layers that share a structure.

A *sublayer* is an ``add(h, delta)`` whose ``delta`` is computed from ``h`` by a body: the ops
on paths from ``h`` to ``delta``. Body values read outside it are the layer's *exports* (its
new keys and values for a KV cache), read only after the chain. Other values the body reads
are per-layer operands (params: weights, and inputs only this layer reads, such as its past
keys) or *context* (computed before, independent of ``h``, read by several layers: masks,
rotary tables). Sublayers chain when one's output is the next one's input and
the stream is read by nothing else. A *block* merges consecutive sublayers of one module
(``h.0``: attention then MLP) into one layer whose body computes ``block(h) - h``.

Two layers share a structure when their bodies are the same ops with the same attributes,
wired alike, reading params of the same types and the same context values; such layers can
be evaluated by one body over stacked weights.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..ir.core import Graph, Op, Value
from .toolkit import producers, users


@dataclass(frozen=True)
class Layer:
    """One residual layer: ``out = stream + f(stream)``, ``f`` being ``ops`` (program order)."""

    stream: Value
    out: Value
    ops: tuple[Op, ...]           # the body, ending with the residual add(s)
    params: tuple[Value, ...]     # per-layer operands (weights, its own inputs), in order of first use
    context: tuple[Value, ...]    # other outside values read by the body, in order of first use
    module: str                   # the module path the body's ops share (``h.0``)
    structure: str                # a canonical text of the body: equal text, equal structure
    exports: tuple[Value, ...] = ()  # body values read after the chain (a KV cache's new entries)


@dataclass(frozen=True)
class Chain:
    """Consecutive layers: ``layers[i].out is layers[i + 1].stream``."""

    layers: tuple[Layer, ...]

    def structures(self) -> list[int]:
        """Per layer, the index of its structure among the chain's distinct structures."""
        seen: dict[str, int] = {}
        return [seen.setdefault(layer.structure, len(seen)) for layer in self.layers]


def find_chains(graph: Graph, granularity: str = "block", min_layers: int = 2) -> list[Chain]:
    """The residual chains of ``graph``'s top-level ops, as sublayers or merged into blocks."""
    if granularity not in ("block", "sublayer"):
        raise ValueError(f"granularity must be 'block' or 'sublayer', got {granularity!r}")
    uses = _Uses.of(graph)
    sublayers = []
    for op in graph.ops:
        if op.name == "add" and op.operands[0].type == op.operands[1].type == op.results[0].type:
            layer = _sublayer(op, uses)
            if layer is not None:
                sublayers.append(layer)
    chains = _link(sublayers, uses)
    if granularity == "block":
        chains = [_blocks(c, uses) for c in chains]
    return [c for c in chains if len(c.layers) >= min_layers]


@dataclass(frozen=True)
class _Uses:
    """Who produces and reads each value of a graph's top level."""

    index: dict[Op, int]
    producer: dict[Value, Op]
    users: dict[Value, list[Op]]
    params: set[Value]
    outputs: set[Value]

    @staticmethod
    def of(graph: Graph) -> _Uses:
        return _Uses({op: i for i, op in enumerate(graph.ops)}, producers(graph.ops), users(graph.ops),
                     {p.value for p in graph.params}, set(graph.outputs))

    def read_outside(self, v: Value, inside: set[Op]) -> bool:
        return v in self.outputs or any(u not in inside for u in self.users.get(v, []))


def _depends_on(target: Value, source: Value, producer: dict, memo: dict) -> bool:
    """Whether ``target`` is computed (transitively) from ``source``."""
    if target is source:
        return True
    key = target
    if key not in memo:
        memo[key] = False
        op = producer.get(key)
        memo[key] = op is not None and any(_depends_on(v, source, producer, memo) for v in op.operands)
    return memo[key]


def _sublayer(add: Op, uses: _Uses) -> Layer | None:
    producer = uses.producer
    for stream, delta in ((add.operands[0], add.operands[1]), (add.operands[1], add.operands[0])):
        memo: dict[Value, bool] = {}
        if stream is delta or not _depends_on(delta, stream, producer, memo):
            continue
        body: dict[Op, Op] = {}
        stack = [delta]
        while stack:  # ops between the stream and delta
            v = stack.pop()
            op = producer.get(v)
            if op is None or op in body or v is stream or not _depends_on(v, stream, producer, memo):
                continue
            body[op] = op
            stack.extend(op.operands)
        ordered = sorted(body.values(), key=lambda o: uses.index[o]) + [add]
        return _layer(stream, add.results[0], tuple(ordered), uses)
    return None


def _layer(stream: Value, out: Value, ops: tuple[Op, ...], uses: _Uses) -> Layer:
    inside_ops = set(ops)
    inside = {r for o in ops for r in o.results}
    reads_params: list[Value] = []
    context: list[Value] = []
    for op in ops:
        for v in op.operands:
            if v is stream or v in inside:
                continue
            own = v in uses.params or not uses.read_outside(v, inside_ops)  # a weight, or read by this layer only
            bucket = reads_params if own else context
            if all(v is not x for x in bucket):
                bucket.append(v)
    exports = tuple(r for o in ops[:-1] for r in o.results if uses.read_outside(r, inside_ops))
    modules = [op.loc.module for op in ops if op.loc.module]
    return Layer(stream, out, ops, tuple(reads_params), tuple(context), _common_module(modules),
                 _structure(stream, ops, reads_params, context, exports), exports)


def _common_module(paths: Sequence[str]) -> str:
    if not paths:
        return ""
    parts = [p.split(".") for p in paths]
    common = []
    for group in zip(*parts):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return ".".join(common)


def _structure(stream: Value, ops: Sequence[Op], reads_params: Sequence[Value], context: Sequence[Value],
               exports: Sequence[Value]) -> str:
    """The body as text with canonical names: stream ``h``, params ``p<i>:type``, context ``c<i>``,
    then which values it exports."""
    names: dict[Value, str] = {stream: "h"}
    for i, p in enumerate(reads_params):
        names[p] = f"p{i}:{p.type}"
    for i, c in enumerate(context):
        names[c] = f"c{i}@{c}"  # the same context value, not just the same type
    lines = []
    for op in ops:
        for r in op.results:
            names[r] = f"v{len(names)}"
        attrs = ",".join(f"{k}={op.attrs[k]!r}" for k in sorted(op.attrs))
        lines.append(f"{'/'.join(names[r] for r in op.results)}={op.name}({','.join(names[v] for v in op.operands)})"
                     f"{{{attrs}}}:{','.join(str(r.type) for r in op.results)}")
    lines.append("exports " + ",".join(names[v] for v in exports))
    return "\n".join(lines)


def _link(sublayers: Sequence[Layer], uses: _Uses) -> list[Chain]:
    by_stream = {s.stream: s for s in sublayers}
    starts = [s for s in sublayers if not any(t.out is s.stream for t in sublayers)]
    chains = []
    for first in starts:
        layers = [first]
        while True:
            nxt = by_stream.get(layers[-1].out)
            # the stream between two layers may be read only by the next layer's body and add
            if nxt is None or any(u not in nxt.ops for u in uses.users.get(layers[-1].out, [])):
                break
            layers.append(nxt)
        chains.append(Chain(_exported_after(layers, uses)))
    return chains


def _exported_after(layers: list[Layer], uses: _Uses) -> tuple[Layer, ...]:
    """The longest prefix of ``layers`` that no value fed by an earlier layer's exports flows into
    (a cache update between layers is fine: the newton pass moves it after the chain)."""
    at = {op: i for i, layer in enumerate(layers) for op in layer.ops}
    end = len(layers)
    for i, layer in enumerate(layers[:end]):
        stack = [u for v in layer.exports for u in uses.users.get(v, []) if at.get(u) != i]
        seen: set[Op] = set()
        while stack:
            op = stack.pop()
            if op in seen:
                continue
            seen.add(op)
            if op in at:
                end = min(end, max(at[op], i + 1))
                continue
            stack.extend(u for r in op.results for u in uses.users.get(r, []))
    return tuple(layers[:end])


def _blocks(chain: Chain, uses: _Uses) -> Chain:
    """Consecutive sublayers of one module merged into one layer each. Graphs without module paths
    (dynamo's) merge each period of the structure pattern ([attention, MLP] repeated: pairs)."""
    if any(not layer.module for layer in chain.layers):
        # symbolic sizes named per layer (dynamo names each cache's length apart) do not break the period
        seen: dict[str, int] = {}
        period = _period([seen.setdefault(re.sub(r"\bs\d+\b", "s", layer.structure), len(seen)) for layer in chain.layers])
        return Chain(tuple(_merge(chain.layers[i: i + period], uses) for i in range(0, len(chain.layers), period)))
    merged: list[Layer] = []
    group: list[Layer] = []
    for layer in chain.layers:
        if group and layer.module != group[0].module:
            merged.append(_merge(group, uses))
            group = []
        group.append(layer)
    if group:
        merged.append(_merge(group, uses))
    return Chain(tuple(merged))


def _period(pattern: Sequence[int]) -> int:
    """The shortest p dividing len(pattern) with pattern[i] == pattern[i % p] (len(pattern) if none)."""
    n = len(pattern)
    return next(p for p in range(1, n + 1) if n % p == 0 and all(pattern[i] == pattern[i % p] for i in range(n)))


def _merge(group: Sequence[Layer], uses: _Uses) -> Layer:
    if len(group) == 1:
        return group[0]
    ops = tuple(op for layer in group for op in layer.ops)
    return _layer(group[0].stream, group[-1].out, ops, uses)
