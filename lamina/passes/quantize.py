"""quantize: linear layers whose weight is a parameter become ``qlinear`` over a packed weight.

``quantize{bits=8|4,group=G,scheme=sym|asym,act=none|int8,layers=PATTERNS,keep=PATTERNS}`` rewrites each
``linear(x, w[, b])`` whose ``w`` is a graph parameter (and each ``matmul(x, w)`` by a 2-d parameter
``w`` [in, out], as transformers' Conv1D layers compute; ``w`` is then quantized as its transpose) into::

    %q, %s = quantize(%w) {bits=4, group=32, scheme="sym"}   # once per plan: w is a weight
    %y = qlinear(%x, %q, %s) {bits=4, group=32, scheme="sym"}
    %z = add(%y, %b)                                          # the bias, where there is one

``layers`` and ``keep`` are ``|``-separated shell patterns (``fnmatch``) over the layer's
module path (``model.layers.0.mlp.down_proj``) and its weight's key: ``layers`` picks the
layers to quantize (default all), ``keep`` leaves some in float (default the LM head:
``*lm_head*``). ``group=0`` is one scale per output channel; the default group is 0 for
8-bit and 32 for 4-bit. ``act=int8`` also quantizes each layer's input per
token to int8 at run time (W8A8, W4A8): the products are integers, so decoding runs integer dot
products (AVX-512 VNNI where the CPU has it) and 8-bit per-channel symmetric prefill integer GEMMs. A layer that the format cannot hold (an input size the group does
not divide, a 4-bit layer whose input is not a multiple of 32) is an error naming the layer
and the option, never a silent skip; ``keep`` it or pick another group. A graph with no
linear layer to quantize is an error too, so a pipeline never claims a quantization it did
not do.

``budget=B`` (average bits per weight over the selected layers: 4, 8 or 32 each; scales and zero
points are not counted, ``compiled.quantization`` reports them in bytes; e.g. 5.0) chooses
per layer among 4-bit (in ``group``, default 32), 8-bit per channel and float32, the least estimated
loss that fits (``passes/bit_budget.py``). The estimate comes from a ``lamina.calibrate`` result the
caller passes (``lamina.compile(..., calibration=...)``): each format's quantization error weighted by
the layer's input second moments (a diagonal-Hessian estimate of the loss it adds), times the
layer's importance (how much its residual block changes the stream, and its share of high-impact
weights). ``rank=reversed|position`` reorders the choice for comparisons. Each ``quantize`` op
carries the layer's importance as ``score``; ``compiled.quantization`` lists the choices.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from ..ir.builder import OpEmitter
from ..ir.core import Graph, Op, Value, walk_ops
from ..ir.dtypes import DType
from ..ir.errors import LaminaError
from ..ir.quant_format import QuantFormat, QuantFormatError
from .bit_budget import RANKS, BudgetError, Candidate, Option, assign
from .toolkit import ValueMap


class QuantizeError(LaminaError, ValueError):
    """Options or a graph the quantize pass cannot honour; the message names the option or layer."""


@dataclass(frozen=True)
class QuantizeOptions:
    """bits: 8 or 4; group: input elements per scale (0: per output channel; -1: 0 for 8-bit, 32 for
    4-bit); scheme: sym or asym; layers / keep: |-separated module-path patterns; budget: average bits
    per weight (0: every layer at ``bits``); rank: score, reversed or position (with a budget); act: none,
    or int8 to quantize activations per token too (integer products, any weight format)."""

    bits: int = 8
    group: int = -1
    scheme: str = "sym"
    layers: str = "*"
    keep: str = "*lm_head*"
    budget: float = 0.0
    rank: str = "score"
    act: str = "none"

    def __post_init__(self) -> None:
        if self.act not in ("none", "int8"):
            raise QuantizeError(f"quantize: act={self.act!r} is not supported; use act=none or act=int8")
        if self.budget < 0:
            raise QuantizeError(f"quantize: budget={self.budget} must be positive (average bits per weight), or 0 "
                                "for no budget")
        if self.rank not in RANKS:
            raise QuantizeError(f"quantize: rank={self.rank!r} is not one of {', '.join(RANKS)}")

    def format(self, bits: int | None = None) -> QuantFormat:
        bits = bits or self.bits
        group = self.group if self.group != -1 else (0 if bits == 8 else 32)
        try:
            return QuantFormat(bits, group, self.scheme)
        except QuantFormatError as e:
            raise QuantizeError(str(e)) from None


def _matches(patterns: str, names: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p.strip()) for p in patterns.split("|") if p.strip() for name in names if name)


def quantize(graph: Graph, options: QuantizeOptions = QuantizeOptions(), calibration: Any = None) -> Graph:
    """Rewrite the chosen float32 ``linear`` layers of ``graph`` to ``qlinear`` (see module doc)."""
    keys = {p.value: p.key for p in graph.params}
    selected = [op for op in graph.ops if _selected(op, keys, options)]
    if not selected:
        _nothing_to_quantize(graph, keys, options)
    if options.budget:
        formats = _budget_formats(selected, keys, options, calibration)
    else:
        fmt = options.format()
        formats = {id(op): fmt for op in selected}
    scores = {id(op): calibration.importance(keys[op.operands[1]]) for op in selected} if options.budget else {}
    out = OpEmitter()
    values = ValueMap()
    for original in graph.ops:
        op = values.op(original)
        fmt = formats.get(id(original))
        if fmt is None:
            out.append(op)
        else:
            values[op.result] = _quantized(op, fmt, out, scores.get(id(original)), options.act)
    return graph.replace(ops=tuple(out.ops), outputs=values.values(graph.outputs))


def _selected(op: Op, keys: dict[Value, str], options: QuantizeOptions) -> bool:
    """A float32 ``linear`` whose weight is a parameter, or a ``matmul`` by a 2-d parameter (a [in, out]
    weight, as transformers' Conv1D), that the patterns select."""
    if op.name not in ("linear", "matmul") or op.operands[1] not in keys or op.operands[1].type.dtype is not DType.f32:
        return False
    if op.name == "matmul" and op.operands[1].type.rank != 2:
        return False
    names = (op.loc.module, keys[op.operands[1]])
    return _matches(options.layers, names) and not _matches(options.keep, names)


def _out_in(op: Op) -> tuple[int, int]:
    """A selected layer's weight as [out, in]: a ``matmul``'s parameter is [in, out]."""
    rows, cols = op.operands[1].type.shape
    return (cols, rows) if op.name == "matmul" else (rows, cols)


def _nothing_to_quantize(graph: Graph, keys: dict[Value, str], options: QuantizeOptions) -> None:
    reads_params = any(op.name == "linear" and op.operands[1] in keys for op in graph.ops)
    after_newton = any(step.startswith("newton") for step in graph.history) or \
        any(op.name == "linear" for top in graph.ops for region in top.regions for op in walk_ops(region.ops))
    if not reads_params and after_newton:
        raise QuantizeError(f"quantize: no linear layer of graph @{graph.name} reads its weight parameter directly "
                            "(newton stacks layer weights); put quantize{...} before newton in the pipeline: "
                            "newton stacks the quantized weights")
    raise QuantizeError(f"quantize: graph @{graph.name} has no float32 linear layer with a weight parameter "
                        f"that layers={options.layers!r} selects and keep={options.keep!r} does not keep; "
                        "nothing to quantize")


def _budget_formats(selected: list[Op], keys: dict[Value, str], options: QuantizeOptions,
                    calibration: Any) -> dict[int, QuantFormat | None]:
    """Each selected layer's format (None: float) under ``options.budget``, from ``calibration``."""
    if calibration is None:
        raise QuantizeError(f"quantize: budget={options.budget:g} needs calibration statistics: "
                            "lamina.compile(model, inputs, pipeline=..., calibration=lamina.calibrate(model, batches))")
    candidates = []
    for op in selected:
        key, (n, k) = keys[op.operands[1]], _out_in(op)
        options_of_layer = [Option(None, 32.0, 0.0)]
        for bits in (8, 4):  # 8-bit per output channel; ``group`` is the 4-bit option's
            fmt = QuantFormat(8, 0, options.scheme) if bits == 8 else options.format(4)
            try:
                fmt.group_size(k)
            except QuantFormatError:
                continue  # this layer cannot take the format: it keeps the others
            try:
                options_of_layer.append(Option(fmt, float(bits), calibration.estimated_loss(key, fmt)))
            except KeyError as e:
                raise QuantizeError(f"quantize: {e.args[0]}") from None
        candidates.append(Candidate(key, int(n) * k, tuple(options_of_layer)))
    try:
        chosen = assign(candidates, options.budget, options.rank)
    except BudgetError as e:
        raise QuantizeError(f"quantize: {e}") from None
    return {id(op): chosen[keys[op.operands[1]]].fmt for op in selected}


def _quantized(op: Op, fmt: QuantFormat, out: OpEmitter, score: float | None, act: str = "none") -> Value:
    x, w = op.operands[0], op.operands[1]
    try:
        fmt.group_size(_out_in(op)[1])
    except QuantFormatError as e:
        raise QuantizeError(f"{e} (layer {op.loc.module or op.describe()}; leave it in float with keep=)") from None
    if op.name == "matmul":  # an [in, out] weight: quantized as its transpose (a view, packed once per plan)
        w = out.emit("permute", w, dims=[1, 0], loc=op.loc)
    attrs = fmt.attrs() if score is None else {**fmt.attrs(), "score": float(score)}
    stored = out.emit_op("quantize", [w], attrs, op.loc).results
    y = out.emit("qlinear", x, *stored, loc=op.loc, act=act, **fmt.attrs())
    return out.emit("add", y, op.operands[2], loc=op.loc) if len(op.operands) == 3 else y
