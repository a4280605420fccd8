"""fold-norms: an inference batch norm folded into the convolution or linear layer it follows.

``batch_norm(conv2d(x, W, b), mean, var, gamma, beta)`` is ``conv2d(x, W * s, (b - mean) * s + beta)``
with ``s = gamma / sqrt(var + eps)`` per output channel; likewise for a ``linear`` whose result is
[N, C] (batch norm over its features). The new weight and bias are computed from the weights alone,
so the runtime computes them once per plan (kept in step with the weights if they change) and each
call saves a pass over the activations. Folded only where the layer's weight, bias and the norm's
statistics are all weights of the graph (not values of the call) and the norm is the layer's only
reader (else the unnormalized result would be computed too).

The folded layer rounds differently from normalizing its output: the results agree to float32's
rounding relative to the output's scale, as every compiler that folds batch norm does.
"""
from __future__ import annotations

from ..ir.core import Graph, Op, Value, users
from .rewrite import Rewriter, Rule, apply_rules, rule


def fold_norms(graph: Graph) -> Graph:
    """Fold every inference ``batch_norm`` that reads a weight-only ``conv2d`` (NCHW) or ``linear`` into it."""
    if not any(op.name == "batch_norm" for op in graph.walk()):
        return graph
    weights = {id(p.value) for p in graph.params}
    readers = {id(v): len(ops) for v, ops in users(graph.walk()).items()}
    for v in graph.outputs:
        readers[id(v)] = readers.get(id(v), 0) + 1
    return apply_rules(graph, (_fold_rule(weights, readers),))


def _fold_rule(weights: set[int], readers: dict[int, int]) -> Rule:
    @rule("batch_norm")
    def fold_batch_norm(op: Op, out: Rewriter) -> tuple[Value, ...] | None:
        x, mean, var, *affine = op.operands
        layer = out.producer(x)
        if layer is None or readers.get(id(x)) != 1 or not _foldable(layer):
            return None
        if not all(id(v) in weights for v in (*layer.operands[1:], mean, var, *affine)):
            return None
        return (_folded(layer, op, out),)

    return fold_batch_norm


def _foldable(layer: Op) -> bool:
    """A layer whose output channels are dim 1 of its result, as batch norm normalizes them."""
    if layer.name == "conv2d":
        return layer.attrs["layout"] == "nchw"
    return layer.name == "linear" and layer.result.type.rank == 2


def _folded(layer: Op, norm: Op, out: Rewriter) -> Value:
    """``layer`` with its weight scaled per output channel and the norm's shift as its bias."""
    x, weight, *bias = layer.operands
    mean, var, *affine = norm.operands[1:]
    loc = norm.loc
    eps = out.emit("full", shape=[], value=float(norm.attrs["eps"]), dtype=var.type.dtype, loc=loc)
    scale = out.emit("rsqrt", out.emit("add", var, eps, loc=loc), loc=loc)
    if affine:
        scale = out.emit("mul", affine[0], scale, loc=loc)
    channels = weight.type.shape[0]
    per_row = out.emit("reshape", scale, shape=[channels] + [1] * (weight.type.rank - 1), loc=loc)
    new_weight = out.emit("mul", weight, per_row, loc=loc)
    shift = out.emit("sub", bias[0], mean, loc=loc) if bias else out.emit("neg", mean, loc=loc)
    new_bias = out.emit("mul", shift, scale, loc=loc)
    if len(affine) > 1:
        new_bias = out.emit("add", new_bias, affine[1], loc=loc)
    return out.emit(layer.name, x, new_weight, new_bias, loc=layer.loc, **layer.attrs)
