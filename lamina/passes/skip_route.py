"""Run-time layer skipping for the skip pass: ``route`` ops whose decision is made by the compiled program.

``skip{policy=router,speedup=S}`` (FiRST): every middle block of the longest residual chain (the first
and last kept) becomes a ``route`` op with the block as its region. Its decision comes from a router,
a linear probe ``w . mean_t(h) + b`` of the block's input ``h`` averaged over the tokens of each
sequence, which ``lamina.calibrate`` fits to predict the block's input/output cosine on each calibration
sequence. A sequence skips the block when the prediction is at least the block's threshold: the
calibration scores' quantile at which a share ``p`` of sequences skips it, ``p`` set so the cost model
(the weight elements each block reads) predicts speedup ``S`` on average. ``S = 1`` routes every block
but skips none (threshold +inf).

The decision is made once per sequence, on the first call (the prompt's prefill), and kept for the
decode: each routed block has a state tensor ``route.<module>`` [batch] (-1 undecided, then 1 run, 0 skip)
that the runtime keeps between calls (``lamina.ProgramState``; share one between the prefill and the
decode module, ``reset()`` it for new sequences). A skipped block's region does not run: its KV-cache
entries are zeros, which nothing reads, as the block stays skipped for that sequence. In a batch, the
block runs when any row needs it, and the rows that skip it keep their input.

``skip{policy=temporal,period=P}`` (LoRA-Drop): middle blocks (or, with ``drop=attn:N|mlp:N|block:N`` and a
calibration, the N most similar sublayers or blocks) compute their update every P calls and reuse the
last token's update in between: ``out = h + cached``. The cached update (``temporal.<module>``
[batch, 1, d]) and the call counter (``temporal.step``) are state tensors; the ops a layer's KV-cache
entries need stay outside the route and run every call, so later tokens attend to every position.
``period=1`` computes every call and is exact. Calls are counted, not tokens: a call of several tokens
between refreshes (a speculative verification) reuses one update for all of them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..ir.builder import OpEmitter, RegionBuilder
from ..ir.core import Graph, Op, State, Value
from ..ir.dtypes import DType
from ..ir.types import TensorType
from .layers import Layer
from .rewrite import remove_dead


@dataclass
class StateAdder:
    """New state inputs and their new values, appended to a graph (after its own states)."""

    states: list[State] = field(default_factory=list)
    new: dict[str, Value] = field(default_factory=dict)

    def add(self, key: str, type: TensorType, init: float) -> Value:
        value = Value(type, key)
        self.states.append(State(key, value, init))
        return value

    def set(self, value: Value, new: Value) -> None:
        self.new[value.hint or ""] = new

    def apply(self, graph: Graph, ops: Sequence[Op], replaced: dict[Value, Value], note: str) -> Graph:
        from .skip import SkipError

        taken = {s.key for s in graph.states} & {s.key for s in self.states}
        if taken:
            raise SkipError(f"skip: the graph already keeps state {', '.join(sorted(taken))}; apply one run-time "
                            "skip policy (router or temporal) per layer")
        return graph.replace(inputs=graph.inputs + tuple(s.value for s in self.states), ops=tuple(ops),
                             outputs=tuple(replaced.get(v, v) for v in graph.outputs)
                             + tuple(self.new[s.key] for s in self.states),
                             states=graph.states + tuple(self.states), history=graph.history + (note,))


Build = Callable[[OpEmitter, Layer, str, StateAdder, dict[Value, Value]], Value]


def route_layers(graph: Graph, layers: Sequence[Layer], build: Build, note: str) -> Graph:
    """``graph``'s ops with each of ``layers`` replaced by what ``build(emitter, layer, name, states, replaced)``
    emits at the place of the layer's last op (its residual add); ``build`` returns the value that replaces
    ``layer.out`` and records other replaced values in ``replaced``; ``name``, the layer's module path (or
    ``layer<i>`` where the graph has none), names its states. ``note`` goes to the graph's history."""
    states = StateAdder()
    at_last = {id(layer.ops[-1]): (layer, layer.module or f"layer{i}") for i, layer in enumerate(layers)}
    inside = {id(op) for layer in layers for op in layer.ops}
    out = OpEmitter()
    replaced: dict[Value, Value] = {}
    for op in graph.ops:
        if id(op) in at_last:
            layer, name = at_last[id(op)]
            replaced[layer.out] = build(out, layer, name, states, replaced)
        elif id(op) not in inside:
            out.append(op.replace(operands=tuple(replaced.get(v, v) for v in op.operands)))
    return states.apply(graph, out.ops, replaced, note)


@dataclass
class LayerRegion:
    """A layer's body (but for the ops computed outside) as a route region being built: its reads (the
    route's inputs: the stream, the extra values, then the outside values the body reads) and the
    region's value for each body value."""

    reads: list[Value]
    builder: RegionBuilder
    values: dict[Value, Value]

    @staticmethod
    def of(layer: Layer, outside: set[int], extra: Sequence[Value] = ()) -> "LayerRegion":
        body = [op for op in layer.ops if id(op) not in outside]
        made = {r for op in body for r in op.results}
        reads: list[Value] = [layer.stream, *extra]
        for op in body:
            for v in op.operands:
                if v not in made and all(v is not r for r in reads):
                    reads.append(v)
        builder = RegionBuilder([v.type for v in reads])
        values = dict(zip(reads, builder.args))
        for op in body:
            copy = builder.append_copy(op, [values[v] for v in op.operands])
            values.update(zip(op.results, copy.results))
        return LayerRegion(reads, builder, values)

    def inputs(self, replaced: dict[Value, Value]) -> list[Value]:
        return [replaced.get(v, v) for v in self.reads]

    def unchanged(self, export: Value, producer: dict[Value, Op]) -> int:
        """Where a skipped layer's export comes from: the cache it updates in place (an input), else -1 (zeros)."""
        op = producer.get(export)
        if op is not None and op.name in ("index_put", "slice_scatter") and op.operands[0] in self.reads:
            return self.reads.index(op.operands[0])
        return -1


def export_ops(layer: Layer) -> set[int]:
    """The ops of ``layer`` its exports (KV-cache entries) need, by id."""
    return {id(op) for op in remove_dead(layer.ops, layer.exports)}


def scalar(out: OpEmitter, value: float, dtype: DType) -> Value:
    return out.emit("full", shape=[], value=value, dtype=dtype)


def router_block(threshold: float, probe: Sequence[float]) -> Build:
    """The builder for ``route_layers`` that routes one block by its probe (see the module doc)."""
    def build(out: OpEmitter, layer: Layer, name: str, states: StateAdder, replaced: dict[Value, Value]) -> Value:
        h = replaced.get(layer.stream, layer.stream)
        b, t, d = h.type.shape
        loc = layer.ops[-1].loc
        zero = scalar(out, 0, DType.i64)
        weight = out.emit("constant", value=[float(x) for x in probe[:-1]], shape=[1, d], dtype=h.type.dtype)
        bias = out.emit("constant", value=[float(probe[-1])], shape=[1], dtype=h.type.dtype)
        score = out.emit("linear", out.emit("mean", h, dims=[1], loc=loc), weight, bias, loc=loc)
        wants = out.emit("cast", out.emit("lt", out.emit("reshape", score, shape=[b]),
                                          scalar(out, threshold, h.type.dtype)), dtype=DType.i64)
        state = states.add(f"route.{name}", TensorType((b,), DType.i64), -1.0)
        decided = out.emit("where", out.emit("lt", state, zero), wants, state)  # -1: decide now, on the prompt
        states.set(state, decided)
        region = LayerRegion.of(layer, set())
        producer = {r: op for op in layer.ops for r in op.results}
        done = region.builder.finish([region.values[layer.out], *(region.values[v] for v in layer.exports)])
        otherwise = [0, *(region.unchanged(v, producer) for v in layer.exports)]
        any_runs = out.emit("gt", out.emit("amax", decided, dims=[0]), zero)
        route = out.emit_op("route", [any_runs, *region.inputs(replaced)], {"otherwise": otherwise}, loc, [done])
        replaced.update(zip(layer.exports, route.results[1:]))
        runs = out.emit("reshape", out.emit("gt", decided, zero), shape=[b, 1, 1])
        return out.emit("where", runs, route.results[0], h, loc=loc)  # rows that skip keep their input

    return build


def temporal_layer(period: int) -> Build:
    """The builder for ``route_layers`` that refreshes a layer's update every ``period`` calls."""
    refresh: list[Value] = []  # the graph's one call counter's test, made at the first layer

    def build(out: OpEmitter, layer: Layer, name: str, states: StateAdder, replaced: dict[Value, Value]) -> Value:
        h = replaced.get(layer.stream, layer.stream)
        b, t, d = h.type.shape
        loc = layer.ops[-1].loc
        if not refresh:  # calls 0, P, 2P, ... compute
            step = states.add("temporal.step", TensorType((), DType.i64), 0.0)
            states.set(step, out.emit("add", step, scalar(out, 1, DType.i64)))
            phase = out.emit("remainder", step, scalar(out, period, DType.i64))
            refresh.append(out.emit("eq", phase, scalar(out, 0, DType.i64)))
        cached = states.add(f"temporal.{name}", TensorType((b, 1, d), h.type.dtype), 0.0)
        reused = out.emit("add", h, out.emit("expand", cached, shape=[b, t, d]), loc=loc)
        outside = export_ops(layer)
        for op in layer.ops:  # the KV-cache entries: every call
            if id(op) in outside:
                out.append(op.replace(operands=tuple(replaced.get(v, v) for v in op.operands)))
        region = LayerRegion.of(layer, outside, extra=[reused, cached])
        y = region.values[layer.out]
        delta = region.builder.emit("sub", y, region.builder.args[0])
        done = region.builder.finish([y, region.builder.emit("slice", delta, dim=1, start=t - 1, end=t)])
        route = out.emit_op("route", [refresh[0], *region.inputs(replaced)], {"otherwise": [1, 2]}, loc, [done])
        states.set(cached, route.results[1])
        return route.results[0]

    return build


def thresholds(scores: Sequence[float], share: float) -> float:
    """The score at or above which a ``share`` of the calibration sequences skip (+inf: none)."""
    if share <= 0 or not scores:
        return float("inf")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1 - min(share, 1.0)))
