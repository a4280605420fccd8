"""Ops with regions and terminators: fused (one kernel), newton (a layer stack solved by
parallel Newton iterations), iterate (a while loop) and yield."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..core import Op, Region, Value
from ..opdef import AttrSpec, Category, OpDef
from ..dtypes import DType
from ..types import TensorType


def _region_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    raise AssertionError("region ops take their result types from their yield; the verifier checks them")


NEWTON_DOC = """h[L] of the residual stack h[l+1] = h[l] + f_l(h[l]), by Identity-Newton iterations.

Operands: the stack's input h[0], then ``contexts`` values every layer reads (masks, rotary
tables), then per region its layers' operands stacked along a new leading axis (weights, a
layer's own inputs such as its past keys). Region b is a layer body: arguments (h,
contexts..., one layer's operands), yielding f(h); layer l uses region ``pattern[l]`` with row
k of region b's stacks, k counting the earlier layers that use region b.
Layers run in chunks of ``chunk``; inside a chunk the layer inputs start at the chunk's
input (``init="input"``) and each of ``iters`` iterations evaluates every f_j at the current
inputs at once, then sets input j+1 to chunk input + f_0 + ... + f_j (a prefix sum over the
layer axis). iters = chunk reproduces the sequential stack.

A body may yield more than f(h): values a layer exports (its new keys and values for a KV
cache), computed in the chunk's last iteration, so from the final iterate. The op's results
are h[L], then every layer's exports in layer order.

With ``tol`` > 0 every iteration evaluates all of a chunk's layers, and the chunk stops once
the update's relative norm ||S' - S|| / ||S'|| (S: the chunk's layer inputs and output) falls
under ``tol``, after at most ``iters`` iterations (and at most its layer count: then it is exact)."""


def _stack_slices(op: Op) -> list[slice]:
    """Per region of a ``newton`` op, where its stacked per-layer operands sit among the operands."""
    contexts = op.attrs["contexts"]
    out, at = [], 1 + contexts
    for region in op.regions:
        n = len(region.args) - 1 - contexts
        out.append(slice(at, at + n))
        at += n
    return out


def newton_stacks(op: Op) -> list[tuple[Value, ...]]:
    """Per region of a ``newton`` op, its stacked per-layer operands."""
    return [tuple(op.operands[s]) for s in _stack_slices(op)]


def layer_rows(pattern: Sequence[int]) -> list[int]:
    """Per layer, its row in its region's stacks."""
    seen: dict[int, int] = {}
    rows = []
    for b in pattern:
        rows.append(seen.get(b, 0))
        seen[b] = rows[-1] + 1
    return rows


T = TypeVar("T")


def newton_schedule(op: Op, operands: Sequence[T], body: Callable[[Region, list[T]], Sequence[T]],
                    add: Callable[[T, T], T], update_norm: Callable[[list[T], list[T]], float] | None = None,
                    counts: list[int] | None = None) -> list[T]:
    """The iteration of a ``newton`` op over values of any kind (the interpreter's arrays);
    ``body(region, args)`` evaluates a layer (f(h), then its exports), ``add`` the prefix sum,
    ``update_norm(old_rows, new_rows)`` the relative norm of an update (for ``tol``); ``counts``
    receives each chunk's iteration count. Returns the op's results: h[L], then each layer's
    exports from its chunk's last iteration. Without ``tol``, the last layer's f and the chunk
    total are computed in the last iteration only (earlier ones need only the layer inputs),
    and a chunk runs at most as many iterations as it has layers (then its inputs are exact)."""
    at = op.attrs
    contexts = list(operands[1: 1 + at["contexts"]])
    pattern, h = at["pattern"], operands[0]
    stacks = [operands[s] for s in _stack_slices(op)]
    weights = [[s[row] for s in stacks[b]] for b, row in zip(pattern, layer_rows(pattern))]
    early = at["tol"] > 0 and update_norm is not None
    exports: list[Sequence[T]] = [()] * len(pattern)
    for start in range(0, len(pattern), at["chunk"]):
        layers = range(start, min(start + at["chunk"], len(pattern)))
        rows = [h] * (len(layers) + 1)  # init "input": every layer starts from the chunk's input
        steps = min(at["iters"], len(layers))  # then the inputs are exact
        for k in range(steps):
            used = layers if early or k == steps - 1 else layers[:-1]
            outs = [body(op.regions[pattern[l]], [x, *contexts, *weights[l]]) for x, l in zip(rows, used)]
            new, total = [h], h
            for out in outs:  # prefix sum over the layer axis
                total = add(total, out[0])
                new.append(total)
            done = early and update_norm(rows, new) < at["tol"]  # type: ignore[misc]
            rows = new
            if done:
                break
        if counts is not None:
            counts.append(k + 1)
        for l, out in zip(layers, outs):
            exports[l] = out[1:]
        h = total
    return [h, *(x for e in exports for x in e)]


def newton_result_types(regions: Sequence[Region], attrs: Mapping[str, Any]) -> list[TensorType]:
    """The stream's type, then the exports' types of each layer in order."""
    return [regions[0].results[0].type] + [v.type for b in attrs["pattern"] for v in regions[b].results[1:]]


def region_result_types(name: str, regions: Sequence[Region], attrs: Mapping[str, Any]) -> list[TensorType]:
    """The result types of a region op built from ``regions``."""
    if name == "newton":
        return newton_result_types(regions, attrs)
    if name == "iterate":  # the carried values, then the iteration count
        return [v.type for v in regions[0].results[:-1]] + [TensorType((), DType.i64)]
    return [v.type for v in regions[0].results]


ITERATE_DOC = """A while loop: the region maps (carried..., invariants...) to (carried'..., r), r a scalar.

The first ``carried`` operands seed the carried values, the rest are passed unchanged each
time. The region runs until r < ``tol`` or ``max_iters`` times; the results are the last
carried values and the number of iterations run (i64). ``newton-expand`` emits one per
chunk when the newton op has a tolerance, r being the Newton update's relative norm."""


ROUTE_DOC = """A layer run or passed over: ``route(decision, inputs...)`` with one region over the inputs.

``decision`` is a bool scalar. When true, the results are the region's yields; when false, result j
is input ``otherwise[j]`` (counting the inputs after the decision) or, where that is -1, zeros of
its type, and the region does not run. ``skip{policy=router}`` routes a layer per sequence
(the decision made at prefill and kept for the decode); ``skip{policy=temporal}`` computes a layer
every few tokens and reuses its output in between."""


def region_arg_types(op: Op, index: int) -> tuple[TensorType, ...]:
    """The types region ``index``'s arguments must have."""
    if op.name == "route":  # the decision is not passed in
        return tuple(v.type for v in op.operands[1:])
    if op.name != "newton":
        return tuple(v.type for v in op.operands)
    contexts = op.operands[: 1 + op.attrs["contexts"]]
    stacks = newton_stacks(op)[index] if index < len(op.regions) else ()
    return tuple(v.type for v in contexts) + tuple(TensorType(v.type.shape[1:], v.type.dtype) for v in stacks)


DEFS = [
    OpDef("fused", ("*inputs",), _region_infer, None, Category.STRUCTURAL,
          "one kernel: its region's block arguments are the operands, its yield the results", regions=1),
    OpDef("newton", ("stream", "*inputs"), _region_infer, None, Category.STRUCTURAL, NEWTON_DOC,
          {"iters": AttrSpec("int"), "chunk": AttrSpec("int"), "pattern": AttrSpec("ints"),
           "contexts": AttrSpec("int", 0), "init": AttrSpec("str", "input"), "tol": AttrSpec("float", 0.0)},
          regions=-1),
    OpDef("iterate", ("*inputs",), _region_infer, None, Category.STRUCTURAL, ITERATE_DOC,
          {"carried": AttrSpec("int"), "max_iters": AttrSpec("int"), "tol": AttrSpec("float")}, regions=1,
          program_regions=True),
    OpDef("route", ("decision", "*inputs"), _region_infer, None, Category.STRUCTURAL, ROUTE_DOC,
          {"otherwise": AttrSpec("ints")}, regions=1, program_regions=True),
    OpDef("yield", ("*values",), lambda t, a: [], None, Category.STRUCTURAL, "ends a region, returning its operands",
          terminator=True),
]
