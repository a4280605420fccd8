"""The op registry: every op lamina knows, defined once.

``REGISTRY`` maps an op name to its :class:`~lamina.ir.opdef.OpDef`; it is
read-only. ``lookup`` gives a helpful error for unknown names.
"""
from __future__ import annotations

import difflib
from types import MappingProxyType

from ..opdef import OpDef, registry
from . import creation, elementwise, layout, nn, placement, reduction, selection, structural, window

REGISTRY = MappingProxyType(registry(
    *elementwise.DEFS, *reduction.DEFS, *nn.DEFS, *layout.DEFS, *placement.DEFS, *selection.DEFS, *creation.DEFS,
    *window.DEFS, *structural.DEFS,
))


def lookup(name: str) -> OpDef:
    """The definition of op ``name``; the KeyError suggests near names."""
    try:
        return REGISTRY[name]
    except KeyError:
        near = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise KeyError(f"unknown op {name!r}{hint}") from None
