"""A generic rewrite walker: local rules over ops, value replacement, CSE and dead-code removal.

A rule looks at one op (operands already rewritten) and returns ``None`` to keep
it or a tuple of Values that replace its results. It gets a ``Rewriter``: new
ops it needs are emitted through it (they land before the op's users), and
``producer(value)`` finds the already-rewritten op that defines an operand.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..ir.builder import OpEmitter
from ..ir.core import Graph, Op, Region, Value
from ..ir.ops import is_terminator
from ..ir.printer import format_attr
from .toolkit import ValueMap



class Rewriter(OpEmitter):
    """What a rule sees besides the op: an emitter for new ops and the producers of values."""

    def __init__(self, producers: dict[int, Op]) -> None:
        super().__init__()
        self.producers = producers

    def producer(self, value: Value) -> Op | None:
        return self.producers.get(id(value))

    def append(self, op: Op) -> Op:
        for v in op.results:
            self.producers[id(v)] = op
        return super().append(op)

    def emit_op(self, *args: Any, **kwargs: Any) -> Op:
        op = super().emit_op(*args, **kwargs)
        for v in op.results:
            self.producers[id(v)] = op
        return op


RuleFn = Callable[[Op, Rewriter], "tuple[Value, ...] | None"]


@dataclass(frozen=True)
class Rule:
    """``ops``: names the rule applies to (empty: every op)."""

    name: str
    ops: frozenset[str]
    apply: RuleFn


def rule(*ops: str) -> Callable[[RuleFn], Rule]:
    def make(fn: RuleFn) -> Rule:
        return Rule(fn.__name__.strip("_"), frozenset(ops), fn)

    return make


class _Walk:
    def __init__(self, rules: Sequence[Rule], cse: bool) -> None:
        self.rules = rules
        self.cse = cse
        self.changed = False

    def ops(self, ops: Sequence[Op], values: ValueMap) -> list[Op]:
        out = Rewriter({})
        seen: dict[Any, Op] = {}
        for op in ops:
            op = self.remap(op, values)
            replaced = self.try_rules(op, out)
            if replaced is not None:
                self.changed = True
                values.replace_results(op, replaced)
                continue
            key = _cse_key(op) if self.cse else None
            if key is not None and key in seen:
                self.changed = True
                values.replace_results(op, seen[key].results)
                continue
            if key is not None:
                seen[key] = op
            out.append(op)
        return out.ops

    def remap(self, op: Op, values: ValueMap) -> Op:
        operands = values.values(op.operands)
        regions = tuple(self.region(r) for r in op.regions)
        if all(a is b for a, b in zip(operands, op.operands)) and all(a is b for a, b in zip(regions, op.regions)):
            return op
        return op.replace(operands=operands, regions=regions)

    def region(self, region: Region) -> Region:
        ops = self.ops(region.ops, ValueMap())
        if len(ops) == len(region.ops) and all(a is b for a, b in zip(ops, region.ops)):
            return region
        return Region(region.args, tuple(ops))

    def try_rules(self, op: Op, out: Rewriter) -> tuple[Value, ...] | None:
        for r in self.rules:
            if r.ops and op.name not in r.ops:
                continue
            scratch = Rewriter(out.producers)
            replaced = r.apply(op, scratch)
            if replaced is not None:
                for new in scratch.ops:
                    out.append(new)
                return tuple(replaced)
        return None


def _cse_key(op: Op) -> Any:
    if op.regions or is_terminator(op):
        return None
    attrs = tuple(sorted((k, format_attr(v)) for k, v in op.attrs.items()))
    return op.name, tuple(id(v) for v in op.operands), attrs, tuple(v.type for v in op.results)


def remove_dead(ops: Sequence[Op], live: Iterable[Value]) -> list[Op]:
    """Ops whose results are (transitively) used by ``live``; every lamina op is pure."""
    needed = {id(v) for v in live}
    kept: list[Op] = []
    for op in reversed(ops):
        if is_terminator(op) or any(id(v) in needed for v in op.results):
            if op.regions:
                op = op.replace(regions=tuple(Region(r.args, tuple(remove_dead(r.ops, r.results))) for r in op.regions))
            kept.append(op)
            needed.update(id(v) for v in op.operands)
    return kept[::-1]


def apply_rules(graph: Graph, rules: Sequence[Rule], cse: bool = True, max_rounds: int = 20) -> Graph:
    """Rewrite to a fixed point: rules, then CSE, then dead-code removal, until nothing changes."""
    for _ in range(max_rounds):
        walk = _Walk(rules, cse)
        values = ValueMap()
        ops = walk.ops(graph.ops, values)
        outputs = values.values(graph.outputs)
        ops = remove_dead(ops, outputs)
        changed = walk.changed or len(ops) != len(graph.ops)
        graph = graph.replace(ops=tuple(ops), outputs=outputs)
        if not changed:
            break
    return graph
