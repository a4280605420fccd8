"""The rewriting toolkit passes share: who produces and who reads a value, a map from old values to
their replacements, a graph rebuilt with values replaced, and a region's body rewritten as a graph.

``Value`` hashes by identity, so it keys these dicts directly. Local rewrites (one op at a time,
to a fixed point) use the rule driver in ``rewrite.py`` instead.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ..ir.core import Graph, Op, Region, Value, producers, region_graph, users

__all__ = ["ValueMap", "elements", "map_region_body", "nbytes", "producers", "rebuild", "region_graph", "users"]


class ValueMap:
    """Old values -> their replacements; a lookup follows chains (a replaced replacement) and gives
    unreplaced values back unchanged."""

    def __init__(self) -> None:
        self._new: dict[Value, Value] = {}

    def __setitem__(self, old: Value, new: Value) -> None:
        if old is not new:
            self._new[old] = new

    def __getitem__(self, v: Value) -> Value:
        while v in self._new:
            v = self._new[v]
        return v

    def __contains__(self, v: Value) -> bool:
        return v in self._new

    def replace_results(self, op: Op, new: Sequence[Value]) -> None:
        """``op``'s results are replaced, in order, by ``new``."""
        for old, fresh in zip(op.results, new):
            self[old] = fresh

    def values(self, vs: Iterable[Value]) -> tuple[Value, ...]:
        return tuple(self[v] for v in vs)

    def op(self, op: Op) -> Op:
        """``op`` reading the replacements of its operands (``op`` itself when none is replaced)."""
        operands = self.values(op.operands)
        return op if all(a is b for a, b in zip(operands, op.operands)) else op.replace(operands=operands)


def rebuild(graph: Graph, ops: Sequence[Op], values: ValueMap) -> Graph:
    """``graph`` with ``ops`` (operands remapped) and its outputs replaced per ``values``."""
    return graph.replace(ops=tuple(values.op(op) for op in ops), outputs=values.values(graph.outputs))


def map_region_body(region: Region, fn: Callable[[Graph], Graph]) -> Region:
    """``region`` with its body (the ops before the terminator) rewritten by the graph pass ``fn``."""
    done = fn(region_graph(region))
    terminator = region.ops[-1]
    return Region(region.args, done.ops + (terminator.replace(operands=done.outputs),))


def elements(v: Value) -> int:
    """The number of elements of ``v``, a symbolic dim counting as 1 (weights are static)."""
    n = 1
    for d in v.type.shape:
        n *= d if isinstance(d, int) else 1
    return n


def nbytes(v: Value) -> int:
    """The bytes of ``v`` (see ``elements``)."""
    return elements(v) * v.type.dtype.itemsize
