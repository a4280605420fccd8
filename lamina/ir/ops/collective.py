"""Collectives across the ranks of a tensor-parallel group: all_reduce, reduce_scatter, all_gather.

Every rank runs the same graph on its own shard of the weights; a collective combines one value across
the ``group`` ranks. Each comes whole (``all_reduce``) or split in two (``all_reduce_start`` then
``wait``): the start's result is the value in flight, which only ``wait`` may read, so a scheduling pass
can move compute between them. Their meaning needs the other ranks' values: the interpreter runs them
in a simulated group (``ir/group.py``), the runtime calls ``torch.distributed`` (``runtime/collectives.py``).

- ``all_reduce``: the sum over the ranks, on every rank.
- ``reduce_scatter``: the sum, cut into ``group`` equal parts along ``dim``; rank r gets part r.
- ``all_gather``: the ranks' values concatenated along ``dim`` in rank order, on every rank.
- ``rank_slice``: no communication: this rank's part (``group`` equal parts along ``dim``) of a value every
  rank holds whole; the start of a sequence-parallel stretch.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sympy

from ..opdef import AttrSpec, Category, InferenceError, OpDef
from ..shapes import dim
from ..types import TensorType

KINDS = ("all_reduce", "reduce_scatter", "all_gather")


def _group(attrs: Mapping[str, Any]) -> int:
    if attrs["group"] < 1:
        raise InferenceError(f"group={attrs['group']} must be a positive number of ranks")
    return attrs["group"]


def _axis(x: TensorType, attrs: Mapping[str, Any]) -> int:
    d = attrs["dim"]
    if not -x.rank <= d < x.rank:
        raise InferenceError(f"dim {d} is out of range for {x}")
    return d % x.rank


def _all_reduce_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    _group(attrs)
    return [types[0]]


def _reduce_scatter_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, n = types[0], _group(attrs)
    axis = _axis(x, attrs)
    size = x.shape[axis]
    if isinstance(size, int) and size % n:
        raise InferenceError(f"reduce_scatter: dim {axis} of {x} does not split into {n} equal parts")
    shape = list(x.shape)
    shape[axis] = dim(sympy.sympify(size) / n)
    return [TensorType(tuple(shape), x.dtype)]


def _all_gather_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    x, n = types[0], _group(attrs)
    axis = _axis(x, attrs)
    shape = list(x.shape)
    shape[axis] = dim(sympy.sympify(x.shape[axis]) * n)
    return [TensorType(tuple(shape), x.dtype)]


_INFER = {"all_reduce": _all_reduce_infer, "reduce_scatter": _reduce_scatter_infer, "all_gather": _all_gather_infer}
_ATTRS = {"all_reduce": {"group": AttrSpec("int")},
          "reduce_scatter": {"group": AttrSpec("int"), "dim": AttrSpec("int")},
          "all_gather": {"group": AttrSpec("int"), "dim": AttrSpec("int")}}


def kind_of(name: str) -> str | None:
    """``all_reduce`` for ``all_reduce`` and ``all_reduce_start``; None for other ops."""
    base = name.removesuffix("_start")
    return base if base in KINDS else None


def _rank_slice_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    return _reduce_scatter_infer(types, attrs)


DEFS = [
    *(OpDef(kind, ("x",), _INFER[kind], None, Category.LIBRARY, f"{kind} across the group's ranks (module doc)",
            _ATTRS[kind]) for kind in KINDS),
    *(OpDef(f"{kind}_start", ("x",), _INFER[kind], None, Category.LIBRARY,
            f"starts an asynchronous {kind}; its result is in flight until a wait reads it", _ATTRS[kind])
      for kind in KINDS),
    OpDef("rank_slice", ("x",), _rank_slice_infer, None, Category.LIBRARY,
          "this rank's part of a value every rank holds whole (module doc)",
          {"group": AttrSpec("int"), "dim": AttrSpec("int")}),
    OpDef("wait", ("pending",), lambda t, a: [t[0]], None, Category.LIBRARY,
          "the result of a started collective, once it has arrived"),
]
