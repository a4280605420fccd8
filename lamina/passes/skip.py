"""skip: remove residual layers from a model's layer stack, by a calibrated or an even schedule.

``skip{policy=unified,speedup=S}`` (Unified Layer Skipping) removes evenly spaced middle layers of
the longest residual chain (``passes/layers.py``, whole blocks; the first and last layer are
always kept) until the stack's cost falls by ``S``: the cost of a layer is the weight elements its
matrix products read (decoding streams them; prefill multiplies by them), and the cost of the rest
of the graph (the LM head) counts too, so ``S`` is the predicted speedup of the whole step.
``speedup=1`` removes nothing. ``skip{policy=exit,speedup=S}`` (LayerSkip's early exit) removes the
last layers instead (the first is kept): the draft of self-speculative decoding for a model trained
with layer dropout rising with depth (``lamina.skip.LayerDropRegularizer``), whose later layers are
the ones it learned to do without.

``skip{policy=similarity,drop=block:N}`` (What Matters in Transformers / LLM-Drop) removes the N
blocks whose output is most similar to their input on calibration data (``lamina.calibrate``'s
per-block cosine; pass ``calibration=`` to ``lamina.compile``); ``drop=attn:N`` and ``drop=mlp:N``
remove the N attention (the sublayers with an ``attention`` op) or MLP sublayers whose output is most
similar to their input (its per-sublayer cosines), the rest of their blocks kept.

``skip{policy=router,speedup=S}`` (FiRST) and ``skip{policy=temporal,period=P}`` (LoRA-Drop) skip at run
time instead: the layers they choose become ``route`` ops, decided per sequence by a calibrated probe or
every P calls, with state tensors the compiled program keeps between calls (``passes/skip_route.py``).

A removed layer is gone from the graph: its output is its input, its ops and weights are dropped,
so no plan reads them. The graph's history records which layers went and the weight bytes saved
(``lamina dump --history``). A layer that exports values (its new keys and values for a KV cache)
keeps the ops those need, computed from its input (the stream as the layers before it left it):
its cache stays filled, so the same caches serve the skipped and the full model (a full model
verifying a skipped one's drafts recomputes those entries anyway); the rest of its body goes.
``cache=skip`` drops those entries too, for caches written in place (``index_copy_`` into a
preallocated cache, as lamina's ``StaticDecode`` and transformers' ``StaticCache`` do): a removed
layer leaves its cache as it was, which is what a self-speculative draft wants, since its removed
layers' entries are never read by it and the verifying full model writes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ir.core import Graph, Value
from ..ir.errors import LaminaError
from .layers import Chain, Layer, find_chains
from .rewrite import remove_dead
from .skip_route import route_layers, router_block, temporal_layer, thresholds
from .toolkit import ValueMap, elements, nbytes

POLICIES = ("unified", "exit", "similarity", "router", "temporal")
CACHES = ("keep", "skip")


class SkipError(LaminaError, ValueError):
    """A schedule the skip pass cannot build; the message names the option."""


@dataclass(frozen=True)
class SkipOptions:
    """policy: unified, exit, similarity, router or temporal; speedup: the target of unified, exit and router
    (>= 1); drop: similarity's ``block:N``, ``attn:N`` or ``mlp:N`` (optional for temporal); period: temporal's
    refresh period in calls (>= 1); cache: what a removed layer does with its KV-cache entries, ``keep`` (compute
    them) or ``skip`` (leave a cache written in place untouched)."""

    policy: str = "unified"
    speedup: float = 1.0
    drop: str = ""
    period: int = 0
    cache: str = "keep"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SkipError(f"skip: policy={self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.speedup < 1:
            raise SkipError(f"skip: speedup={self.speedup:g} must be at least 1 (1 removes nothing)")
        if self.policy == "similarity" and not self.drop:
            raise SkipError("skip: policy=similarity needs drop=block:N (the number of blocks to remove)")
        if self.policy == "temporal" and (not isinstance(self.period, int) or self.period < 1):
            raise SkipError(f"skip: policy=temporal needs period=P, a whole number of calls >= 1 between "
                            f"refreshes (1 computes every call), got period={self.period!r}")
        if self.period and self.policy != "temporal":
            raise SkipError(f"skip: period= is temporal's option, not policy={self.policy}'s")
        if self.cache not in CACHES:
            raise SkipError(f"skip: cache={self.cache!r} is not one of {', '.join(CACHES)}")
        if self.cache == "skip" and self.policy in ("router", "temporal"):
            raise SkipError(f"skip: cache=skip removes layers' cache writes at compile time; policy={self.policy} "
                            "skips at run time and keeps them")


def skip(graph: Graph, options: SkipOptions = SkipOptions(), calibration: Any = None) -> Graph:
    """Remove the layers ``options`` schedules from ``graph``'s longest residual chain (see module doc)."""
    granularity = "sublayer" if options.drop.startswith(("attn:", "mlp:")) else "block"
    chains = find_chains(graph, granularity, min_layers=1)
    if not chains:
        raise SkipError(f"skip: graph @{graph.name} has no residual layer stack (h + f(h) chains) to skip layers of")
    chain = max(chains, key=lambda c: len(c.layers))
    if options.policy == "router":
        return _routed(graph, chain, options.speedup, calibration)
    if options.policy == "temporal":
        layers = _by_similarity(chain, options.drop, calibration) if options.drop else list(chain.layers[1:-1])
        names = ", ".join(f"{layer.module}{_sublayer_kind(layer, granularity)}" for layer in layers)
        return route_layers(graph, layers, temporal_layer(options.period),
                            f"skip: temporal, {len(layers)} {granularity}s refreshed every {options.period} calls "
                            f"({names})")
    if options.policy in ("unified", "exit"):
        removed, predicted = _by_cost(graph, chain, options.speedup, options.policy)
    else:
        removed, predicted = _by_similarity(chain, options.drop, calibration), None
    if not removed:
        return graph
    values = ValueMap()
    for layer in removed:
        values[layer.out] = values[layer.stream]
        if options.cache == "skip":
            for export in layer.exports:
                values[export] = _unwritten(graph, layer, export)
    ops = [values.op(op) for op in graph.ops]
    outputs = values.values(graph.outputs)
    ops = remove_dead(ops, outputs)  # a removed layer's body goes, but for what its exports need
    read = {v for op in ops for v in op.operands} | set(outputs)
    params = tuple(p for p in graph.params if p.value in read)
    saved = sum(nbytes(p.value) for p in graph.params if p.value not in read)
    exporting = sum(1 for layer in removed if layer.exports)
    unit = "sublayers" if granularity == "sublayer" else "layers"
    names = [(layer.module or "?") + _sublayer_kind(layer, granularity) for layer in removed]
    note = (f"skip: removed {len(removed)} of {len(chain.layers)} {unit} "
            f"({', '.join(names)}), {saved / 1e6:.2f} MB of weights"
            + (f", predicted speedup {predicted:.2f}x" if predicted else "")
            + (f"; {exporting} of them still compute their cache entries" if exporting and options.cache == "keep"
               else f"; {exporting} of them leave their caches unwritten" if exporting else ""))
    return graph.replace(ops=tuple(ops), outputs=outputs, params=params, history=graph.history + (note,))


def _unwritten(graph: Graph, layer: Layer, export: Value) -> Value:
    """For ``cache=skip``: the cache a removed layer's export is the in-place update of (an ``index_put`` into a
    graph input), which the layer then leaves as it was."""
    producer = next((op for op in layer.ops if export in op.results), None)
    if producer is None or producer.name != "index_put" or producer.operands[0] not in graph.inputs:
        what = f"{producer.name} (keys or values grown by concatenation)" if producer is not None else "a value"
        raise SkipError(f"skip: cache=skip needs caches written in place (index_copy_ into a preallocated cache, "
                        f"as lamina's StaticDecode or transformers' StaticCache); layer {layer.module or '?'} exports "
                        f"{what}; use cache=keep")
    return producer.operands[0]


def _by_cost(graph: Graph, chain: Chain, speedup: float, policy: str) -> tuple[list[Layer], float]:
    """The fewest layers to remove for ``speedup`` by the cost model, and the speedup it predicts: evenly
    spaced middle ones (unified: the first and last kept) or the last ones (exit: the first kept)."""
    layers = chain.layers
    weights = _weights(graph)
    costs = [_cost(layer.ops, weights) for layer in layers]
    inside = {id(op) for layer in layers for op in layer.ops}
    total = sum(costs) + _cost([op for op in graph.ops if id(op) not in inside], weights)
    if speedup == 1 or total == 0:
        return [], 1.0
    removable = len(layers) - (2 if policy == "unified" else 1)
    for n in range(1, removable + 1):
        picked = _evenly(n, removable) if policy == "unified" else list(range(len(layers) - n, len(layers)))
        predicted = total / (total - sum(costs[i] for i in picked))
        if predicted >= speedup - 1e-9:
            return [layers[i] for i in picked], predicted
    kept = "the first and last are kept" if policy == "unified" else "the first is kept"
    best = total / (total - sum(costs[1:1 + removable])) if removable > 0 else 1.0
    raise SkipError(f"skip: speedup={speedup:g} needs more than the {max(removable, 0)} removable layers of "
                    f"{len(layers)} ({kept}; removing all of them gives {best:.2f}x)")


def _evenly(n: int, middle: int) -> list[int]:
    """``n`` indices among the middle layers 1..middle, spread evenly (centred in equal slices)."""
    return sorted({1 + min(middle - 1, int((i + 0.5) * middle / n)) for i in range(n)})


def _by_similarity(chain: Chain, drop: str, calibration: Any) -> list[Layer]:
    """The N blocks (or attention / MLP sublayers) of ``chain`` whose input and output are most similar."""
    kind, _, count = drop.partition(":")
    if kind not in ("block", "attn", "mlp") or not count.isdigit():
        raise SkipError(f"skip: drop={drop!r} must be block:N, attn:N or mlp:N")
    n = int(count)
    if calibration is None:
        raise SkipError("skip: policy=similarity needs calibration statistics: lamina.compile(model, inputs, "
                        "pipeline=..., calibration=lamina.calibrate(model, batches))")
    if kind == "block":
        candidates = list(chain.layers)
    else:
        candidates = [layer for layer in chain.layers if _is_attention(layer) == (kind == "attn")]
    if kind == "block" and n >= len(candidates):
        raise SkipError(f"skip: drop=block:{n} would remove every one of the {len(candidates)} layers; keep at "
                        "least one")
    if n > len(candidates):
        raise SkipError(f"skip: drop={drop} asks for more than the {len(candidates)} {kind} sublayers there are")
    missing = [layer.module for layer in candidates if _similarity(calibration, layer, kind) is None]
    if missing:
        what = "statistics" if kind == "block" else f"{kind} sublayer statistics (its attention output not found)"
        raise SkipError(f"skip: the calibration has no {what} for layers {', '.join(missing[:3])}; calibrate "
                        "the model this graph was traced from")
    ranked = sorted(candidates, key=lambda layer: -_similarity(calibration, layer, kind))
    chosen = {id(layer) for layer in ranked[:n]}
    return [layer for layer in chain.layers if id(layer) in chosen]


def _routed(graph: Graph, chain: Chain, speedup: float, calibration: Any) -> Graph:
    """The middle blocks of ``chain`` as route ops with calibrated routers, skipped by a share of sequences
    that predicts ``speedup`` (see ``passes/skip_route.py``)."""
    if calibration is None:
        raise SkipError("skip: policy=router needs calibration (its routers are probes lamina.calibrate fits): "
                        "lamina.compile(model, inputs, pipeline=..., calibration=lamina.calibrate(model, batches))")
    layers = list(chain.layers[1:-1])
    if not layers:
        raise SkipError(f"skip: policy=router routes the middle blocks (the first and last are kept), and this "
                        f"stack has {len(chain.layers)}")
    if any(layer.stream.type.rank != 3 for layer in layers):
        raise SkipError("skip: policy=router needs a [batch, tokens, features] stream (its decision is per sequence)")
    stats = [calibration.block(layer.module) for layer in layers]
    missing = [layer.module for layer, b in zip(layers, stats) if b is None or not b.router]
    if missing:
        raise SkipError(f"skip: the calibration has no router for blocks {', '.join(missing[:3])}; calibrate the "
                        "model this graph was traced from, with batches of [batch, tokens] sequences")
    weights = _weights(graph)
    costs = [_cost(layer.ops, weights) for layer in layers]
    inside = {id(op) for layer in chain.layers for op in layer.ops}
    total = sum(_cost(layer.ops, weights) for layer in chain.layers) + _cost(
        [op for op in graph.ops if id(op) not in inside], weights)
    share = (1 - 1 / speedup) * total / sum(costs) if sum(costs) else 0.0
    if share > 1:
        best = total / (total - sum(costs))
        raise SkipError(f"skip: speedup={speedup:g} is more than skipping all {len(layers)} routed blocks for every "
                        f"sequence gives ({best:.2f}x; the first and last are kept)")
    marks = [thresholds(b.router_scores, share) for b in stats]
    note = (f"skip: router, {len(layers)} of {len(chain.layers)} blocks routed "
            f"({', '.join(layer.module for layer in layers)}), each skipped by about {share:.0%} of sequences, "
            f"predicted speedup {speedup:.2f}x")
    builders = {id(layer): router_block(mark, b.router) for layer, mark, b in zip(layers, marks, stats)}
    return route_layers(graph, layers, lambda out, layer, *rest: builders[id(layer)](out, layer, *rest), note)


def _sublayer_kind(layer: Layer, granularity: str) -> str:
    return "" if granularity == "block" else " attn" if _is_attention(layer) else " mlp"


def _is_attention(layer: Layer) -> bool:
    return any(op.name == "attention" for op in layer.ops)


def _similarity(calibration: Any, layer: Layer, kind: str) -> float | None:
    block = calibration.block(layer.module)
    if block is None:
        return None
    return block.cosine if kind == "block" else block.sublayer_cosine(kind)


def _weights(graph: Graph) -> dict[Value, int]:
    """Weight elements of each matrix parameter, and of views of one (a transposed LM head)."""
    out = {p.value: elements(p.value) for p in graph.params if p.value.type.rank >= 2}
    for op in graph.walk():
        if op.name in ("permute", "reshape") and op.operands and op.operands[0] in out:
            out[op.results[0]] = out[op.operands[0]]
    return out


def _cost(ops: Any, weights: dict[Value, int]) -> int:
    """Weight elements the matrix products among ``ops`` read: what a step streams."""
    return sum(weights.get(op.operands[1], 0) for op in ops
               if op.name in ("linear", "matmul", "qlinear") and len(op.operands) > 1)
