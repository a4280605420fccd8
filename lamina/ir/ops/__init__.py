"""The op registry: every op lamina knows, defined once.

``REGISTRY`` maps an op name to its :class:`~lamina.ir.opdef.OpDef`; it is
read-only. ``lookup`` gives a helpful error for unknown names.
"""
from __future__ import annotations

import difflib
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..opdef import Category, OpDef, registry
if TYPE_CHECKING:
    from ..core import Op
from . import (collective, creation, elementwise, layout, nn, placement, quantized, reduction, selection, structural,
               window)

REGISTRY = MappingProxyType(registry(
    *elementwise.DEFS, *reduction.DEFS, *nn.DEFS, *layout.DEFS, *placement.DEFS, *selection.DEFS, *creation.DEFS,
    *window.DEFS, *quantized.DEFS, *structural.DEFS, *collective.DEFS,
))


def lookup(name: str) -> OpDef:
    """The definition of op ``name``; the KeyError suggests near names."""
    try:
        return REGISTRY[name]
    except KeyError:
        near = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise KeyError(f"unknown op {name!r}{hint}") from None


def category(name: str) -> Category:
    """The category of op ``name`` (see :class:`~lamina.ir.opdef.Category`)."""
    return lookup(name).category


def reduced_axes(op: Op) -> tuple[int, ...]:
    """The axes of its first operand that reduction ``op`` reduces."""
    return lookup(op.name).reduced_axes(op.operands[0].type.rank, op.attrs)


def is_terminator(op: Op) -> bool:
    """Whether ``op`` ends a region (``yield``); False for unknown ops (the verifier names those)."""
    opdef = REGISTRY.get(op.name)
    return opdef is not None and opdef.terminator
