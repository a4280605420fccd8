"""The second step of ``fuse``: a pointwise kernel whose every result is read by one other kernel is
merged into it, its values recomputed where that kernel reads them instead of going through memory.

The greedy first step decides in program order and cannot see that a kernel will have a single
reader: in rotary embeddings ``q * cos`` and ``neg(q[..., d/2:])`` each start a kernel before the
``cat(...) * sin + q * cos`` that reads them exists, and ``silu(gate)`` cannot join the ``* up``
kernel because ``up`` is a GEMM computed after it. Merging them afterwards is always safe:

- no cycle: the producer's results go to the consumer only, so no path leaves the producer and
  comes back into the consumer through a third op;
- the same values: a pointwise member is an expression of its operands at an index, and the
  kernel builder evaluates members at whatever index a reader asks for (through permutes, slices
  and concats alike);
- no extra work: the merge is refused where an element would be computed more than once per
  output element (a broadcast: an ``expand`` on the way, or an elementwise reader whose operand is
  smaller than its result), so the saved memory round trip is not paid for with repeated compute.
"""
from __future__ import annotations

from typing import Any

from ..ir.core import Graph, Op, Value
from ..ir.opdef import ALL_OPERANDS, Category
from ..ir.ops import category, lookup
from ..ir.shapes import at_least, numel


def _count(v: Value) -> Any:
    return numel(v.type.shape)


def _reads_each_element_once(op: Op, k: int) -> bool:
    """Whether ``op`` reads each element of its operand ``k`` at most once per output element
    it computes: an elementwise op without broadcasting, a reduction over it, or a join (concat)."""
    kind = category(op.name)
    if kind is Category.REDUCTION:
        return True
    if kind is Category.ELEMENTWISE:
        return op.operands[k].type.shape == op.results[0].type.shape
    if lookup(op.name).remapped == ALL_OPERANDS and len(op.results) == 1:  # a join: every element once
        return _count(op.results[0]) == sum((_count(v) for v in op.operands), start=0)
    return False


def _readers_through_views(v: Value, readers: dict, outputs: set[Value]) -> list[tuple[Op, int]] | None:
    """The non-view ops reading ``v`` (directly or through views) with the operand index they read it
    at; None if it escapes (a graph output) or a view on the way repeats elements (a broadcast)."""
    if v in outputs:
        return None
    found: list[tuple[Op, int]] = []
    for u in readers.get(v, []):
        if category(u.name).free:
            if any(at_least(_count(v), _count(r)) is not True for r in u.results):
                return None
            for r in u.results:
                more = _readers_through_views(r, readers, outputs)
                if more is None:
                    return None
                found += more
        else:
            found += [(u, k) for k, x in enumerate(u.operands) if x is v]
    return found


def absorb_producers(graph: Graph, groups: list, group_of: dict, readers: dict, max_ops: int) -> list:
    """Merge each pointwise group into the one group reading all its results, latest first (a chain
    of single-reader kernels becomes one); returns the groups left. ``group_of`` is updated."""
    outputs = set(graph.outputs)
    position = {op: i for i, op in enumerate(graph.ops)}
    for producer in sorted(groups, key=lambda g: -g.first):
        if producer.axes is not None or any(category(o.name) is Category.SCAN for o in producer.ops):
            continue
        consumer = _single_reader(producer, group_of, readers, outputs)
        if consumer is None or len(producer.ops) + len(consumer.ops) > max_ops \
                or any(category(o.name) is Category.SCAN for o in consumer.ops):
            continue
        consumer.ops = sorted(producer.ops + consumer.ops, key=position.__getitem__)
        consumer.first = min(producer.first, consumer.first)
        for op in producer.ops:
            group_of[op] = consumer
        producer.ops = []
    return [g for g in groups if g.ops]


def _single_reader(producer: Any, group_of: dict, readers: dict, outputs: set[Value]) -> Any | None:
    members = set(producer.ops)
    consumer = None
    for op in producer.ops:
        for v in op.results:
            reads = _readers_through_views(v, readers, outputs)
            if reads is None:
                return None
            for u, k in reads:
                if u in members:
                    continue
                group = group_of.get(u)
                if group is None or (consumer is not None and group is not consumer) \
                        or not _reads_each_element_once(u, k):
                    return None
                consumer = group
    return consumer

