"""How many bytes a step moves, for the profile's GB/s: what it reads of each operand, what it writes.

A step reads every operand whole, except one it reads only through a position remap: an embedding's
table, a gather's or ``index_select``'s source, a slice. There each element of the remapping op's result
reads at most one element of the operand, so the bytes read are at most the result's element count
times the operand's element size (a decode step's embedding reads one row of a 131 MB table, which
the profile counted whole: 20 TB/s, 61239% of the copy rate). In a fused kernel the operand's uses
inside the region decide.
"""
from __future__ import annotations

from collections.abc import Callable

from ..ir.core import Op, Value
from ..ir.ops import REGISTRY


def bytes_read(op: Op, k: int, nbytes: Callable[[Value], int]) -> int:
    """Bytes of operand ``k`` that ``op`` reads; ``nbytes`` gives a value's whole size at the plan's sizes."""
    operand = op.operands[k]
    whole = nbytes(operand)
    if op.name == "fused" and op.regions and len(op.regions[0].args) == len(op.operands):
        arg = op.regions[0].args[k]
        uses = [(u, i) for u in op.regions[0].ops for i, o in enumerate(u.operands) if o is arg]
    else:
        uses = [(op, k)]
    if not uses:
        return whole
    picked = 0
    for user, i in uses:
        opdef = REGISTRY.get(user.name)
        if opdef is None or not opdef.reads_remapped(i) or len(user.results) != 1:
            return whole
        result = user.results[0]
        size = nbytes(result)
        if not isinstance(size, int):  # known only per call
            return whole
        picked += size // result.type.dtype.itemsize * operand.type.dtype.itemsize
    return min(whole, picked)
