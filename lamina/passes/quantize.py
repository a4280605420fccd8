"""quantize: linear layers whose weight is a parameter become ``qlinear`` over a packed weight.

``quantize{bits=8|4,group=G,scheme=sym|asym,layers=PATTERNS,keep=PATTERNS}`` rewrites each
``linear(x, w[, b])`` whose ``w`` is a graph parameter into::

    %q, %s = quantize(%w) {bits=4, group=32, scheme="sym"}   # once per plan: w is a weight
    %y = qlinear(%x, %q, %s) {bits=4, group=32, scheme="sym"}
    %z = add(%y, %b)                                          # the bias, where there is one

``layers`` and ``keep`` are ``|``-separated shell patterns (``fnmatch``) over the layer's
module path (``model.layers.0.mlp.down_proj``) and its weight's key: ``layers`` picks the
layers to quantize (default all), ``keep`` leaves some in float (default the LM head:
``*lm_head*``). ``group=0`` is one scale per output channel; the default group is 0 for
8-bit and 32 for 4-bit. A layer that the format cannot hold (an input size the group does
not divide, a 4-bit layer whose input is not a multiple of 32) is an error naming the layer
and the option, never a silent skip; ``keep`` it or pick another group. A graph with no
linear layer to quantize is an error too, so a pipeline never claims a quantization it did
not do.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ..ir.builder import OpEmitter
from ..ir.core import Graph, Op, Value, walk_ops
from ..ir.dtypes import DType
from ..ir.errors import LaminaError
from ..ir.quant_format import QuantFormat, QuantFormatError
from .toolkit import ValueMap


class QuantizeError(LaminaError, ValueError):
    """Options or a graph the quantize pass cannot honour; the message names the option or layer."""


@dataclass(frozen=True)
class QuantizeOptions:
    """bits: 8 or 4; group: input elements per scale (0: per output channel; -1: 0 for 8-bit, 32 for
    4-bit); scheme: sym or asym; layers / keep: |-separated module-path patterns."""

    bits: int = 8
    group: int = -1
    scheme: str = "sym"
    layers: str = "*"
    keep: str = "*lm_head*"

    def format(self) -> QuantFormat:
        group = self.group if self.group != -1 else (0 if self.bits == 8 else 32)
        try:
            return QuantFormat(self.bits, group, self.scheme)
        except QuantFormatError as e:
            raise QuantizeError(str(e)) from None


def _matches(patterns: str, names: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p.strip()) for p in patterns.split("|") if p.strip() for name in names if name)


def quantize(graph: Graph, options: QuantizeOptions = QuantizeOptions()) -> Graph:
    """Rewrite the chosen float32 ``linear`` layers of ``graph`` to ``qlinear`` (see module doc)."""
    fmt = options.format()
    keys = {p.value: p.key for p in graph.params}
    out = OpEmitter()
    values = ValueMap()
    count = 0
    for op in graph.ops:
        op = values.op(op)
        weight = op.operands[1] if op.name == "linear" else None
        if weight is None or weight not in keys or weight.type.dtype is not DType.f32:
            out.append(op)
            continue
        names = (op.loc.module, keys[weight])
        if not _matches(options.layers, names) or _matches(options.keep, names):
            out.append(op)
            continue
        values[op.result] = _quantized(op, fmt, out)
        count += 1
    reads_params = any(op.name == "linear" and op.operands[1] in keys for op in graph.ops)
    after_newton = any(step.startswith("newton") for step in graph.history) or \
        any(op.name == "linear" for top in graph.ops for region in top.regions for op in walk_ops(region.ops))
    if count == 0 and not reads_params and after_newton:
        raise QuantizeError(f"quantize: no linear layer of graph @{graph.name} reads its weight parameter directly "
                            "(newton stacks layer weights); put quantize{...} before newton in the pipeline: "
                            "newton stacks the quantized weights")
    if count == 0:
        raise QuantizeError(f"quantize: graph @{graph.name} has no float32 linear layer with a weight parameter "
                            f"that layers={options.layers!r} selects and keep={options.keep!r} does not keep; "
                            "nothing to quantize")
    return graph.replace(ops=tuple(out.ops), outputs=values.values(graph.outputs))


def _quantized(op: Op, fmt: QuantFormat, out: OpEmitter) -> Value:
    x, w = op.operands[0], op.operands[1]
    try:
        fmt.group_size(w.type.shape[1])
    except QuantFormatError as e:
        raise QuantizeError(f"{e} (layer {op.loc.module or op.describe()}; leave it in float with keep=)") from None
    stored = out.emit_op("quantize", [w], fmt.attrs(), op.loc).results
    y = out.emit("qlinear", x, *stored, loc=op.loc, **fmt.attrs())
    return out.emit("add", y, op.operands[2], loc=op.loc) if len(op.operands) == 3 else y
