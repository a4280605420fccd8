"""Ops with regions and terminators: fused (one kernel) and yield."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..opdef import Kind, OpDef
from ..types import TensorType


def _region_infer(types: Sequence[TensorType], attrs: Mapping[str, Any]) -> list[TensorType]:
    raise AssertionError("region ops take their result types from their yield; the verifier checks them")


DEFS = [
    OpDef("fused", ("*inputs",), _region_infer, None, Kind.STRUCTURAL,
          "one kernel: its region's block arguments are the operands, its yield the results", regions=1),
    OpDef("yield", ("*values",), lambda t, a: [], None, Kind.STRUCTURAL, "ends a region, returning its operands"),
]
