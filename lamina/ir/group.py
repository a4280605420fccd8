"""A simulated tensor-parallel group: N ranks of one graph interpreted in one process, in lockstep.

Each rank has its own inputs and weights (its shard); ops run rank by rank, and a collective
(``ops/collective.py``) combines the ranks' values as ``torch.distributed`` would, with the sum taken in
float64 and rounded once (the processes sum in another order: they agree within float32 rounding).
This is the reference the runtime's collectives and the shard and overlap passes are checked against,
without processes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .core import Graph, Op, walk_ops
from .dtypes import round_to
from .interpreter import GROUP_OPS, InterpreterError, prepare
from .ops.collective import kind_of


def interpret_group(graph: Graph, inputs: Sequence[Sequence[np.ndarray]],
                    params: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Per rank, the outputs of ``graph`` for that rank's ``inputs`` and ``params`` (one entry per rank)."""
    if len(inputs) != len(params) or not inputs:
        raise InterpreterError(f"interpret_group needs inputs and params for each rank, got {len(inputs)} and "
                               f"{len(params)}")
    for op in graph.ops:
        for inner in walk_ops(tuple(op.regions[0].ops) if op.regions else ()):
            if inner.name in GROUP_OPS:
                raise InterpreterError(f"{inner.describe()} is inside the region of {op.describe()}: collectives "
                                       "run at the top level of a graph")
    ranks = [prepare(graph, x, p) for x, p in zip(inputs, params)]
    for op in graph.ops:
        args = [[env[id(v)] for v in op.operands] for _, env in ranks]
        if op.name == "wait":
            outs = [[x[0]] for x in args]
        elif op.name == "rank_slice":  # no communication: each rank's own part of its own value
            _group_size(op, len(ranks))
            outs = [[np.ascontiguousarray(np.split(a[0], len(ranks), op.attrs["dim"])[r])] for r, a in enumerate(args)]
        elif op.name in GROUP_OPS:
            outs = [[y] for y in collective(op, [a[0] for a in args])]
        else:
            outs = [interpreter.run_op(op, a) for (interpreter, _), a in zip(ranks, args)]
        for (_, env), out in zip(ranks, outs):
            for value, array in zip(op.results, out):
                env[id(value)] = array
    return [[env[id(v)] for v in graph.outputs] for _, env in ranks]


def collective(op: Op, values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each rank's result of collective ``op`` given every rank's operand (``values``, in rank order)."""
    n, kind = len(values), kind_of(op.name)
    _group_size(op, n)
    dtype = op.results[0].type.dtype
    if kind == "all_gather":
        whole = np.concatenate(values, axis=op.attrs["dim"])
        return [whole.copy() for _ in values]
    total = round_to(np.sum(np.stack([v.astype(np.float64) for v in values]), axis=0), dtype).astype(values[0].dtype)
    if kind == "all_reduce":
        return [total.copy() for _ in values]
    return [np.ascontiguousarray(part) for part in np.split(total, n, axis=op.attrs["dim"])]


def _group_size(op: Op, n: int) -> None:
    if op.attrs["group"] != n:
        raise InterpreterError(f"{op.describe()} is for a group of {op.attrs['group']} ranks, the simulated group "
                               f"has {n}")
