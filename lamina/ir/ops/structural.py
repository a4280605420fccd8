"""Ops with regions and terminators: fused (one kernel), newton (a layer stack solved by
parallel Newton iterations) and yield."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core import Op, Value
from ..opdef import AttrSpec, Kind, OpDef
from ..types import TensorType


def _region_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    raise AssertionError("region ops take their result types from their yield; the verifier checks them")


NEWTON_DOC = """h[L] of the residual stack h[l+1] = h[l] + f_l(h[l]), by Identity-Newton iterations.

Operands: the stack's input h[0], then ``contexts`` values every layer reads (masks, rotary
tables), then each layer's weights in layer order. Region b is a layer body: arguments
(h, contexts..., one layer's weights), yielding f(h); layer l uses region ``pattern[l]``.
Layers run in chunks of ``chunk``; inside a chunk the layer inputs start at the chunk's
input (``init="input"``) and each of ``iters`` iterations evaluates every f_j at the current
inputs at once, then sets input j+1 to chunk input + f_0 + ... + f_j (a prefix sum over the
layer axis). iters = chunk reproduces the sequential stack."""


def newton_layer_params(op: Op) -> list[tuple[Value, ...]]:
    """Per layer of a ``newton`` op, the operands that are its weights."""
    contexts, pattern = op.attrs["contexts"], op.attrs["pattern"]
    counts = [len(r.args) - 1 - contexts for r in op.regions]
    out, at = [], 1 + contexts
    for body in pattern:
        out.append(tuple(op.operands[at: at + counts[body]]))
        at += counts[body]
    return out


def region_operands(op: Op, index: int) -> tuple[Value, ...]:
    """The operands whose types region ``index``'s arguments must have."""
    if op.name != "newton":
        return tuple(op.operands)
    layer = op.attrs["pattern"].index(index) if index in op.attrs["pattern"] else None
    if layer is None:
        raise ValueError(f"newton region {index} is used by no layer (pattern {op.attrs['pattern']})")
    contexts = tuple(op.operands[1: 1 + op.attrs["contexts"]])
    return (op.operands[0],) + contexts + newton_layer_params(op)[layer]


DEFS = [
    OpDef("fused", ("*inputs",), _region_infer, None, Kind.STRUCTURAL,
          "one kernel: its region's block arguments are the operands, its yield the results", regions=1),
    OpDef("newton", ("stream", "*inputs"), _region_infer, None, Kind.STRUCTURAL, NEWTON_DOC,
          {"iters": AttrSpec("int"), "chunk": AttrSpec("int"), "pattern": AttrSpec("ints"),
           "contexts": AttrSpec("int", 0), "init": AttrSpec("str", "input")}, regions=-1),
    OpDef("yield", ("*values",), lambda t, a: [], None, Kind.STRUCTURAL, "ends a region, returning its operands"),
]
