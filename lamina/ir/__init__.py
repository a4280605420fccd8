"""lamina's graph IR: types, values, ops, graphs, the op registry, text form, verifier, interpreter.

The names below are imported on first use, so that what needs only a leaf module (``ir.errors``,
``ir.dtypes``: a saved module's fast load) does not pay for SymPy and the op registry.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

_WHERE = {
    "GraphBuilder": ".builder", "OpEmitter": ".builder", "RegionBuilder": ".builder",
    "Graph": ".core", "Loc": ".core", "Op": ".core", "Param": ".core", "Region": ".core", "Value": ".core",
    "DType": ".dtypes", "IRParseError": ".errors", "LaminaError": ".errors", "VerifyError": ".errors",
    "InterpreterError": ".interpreter", "interpret": ".interpreter",
    "Category": ".opdef", "InferenceError": ".opdef", "OpDef": ".opdef", "REGISTRY": ".ops", "lookup": ".ops",
    "parse": ".parser", "print_graph": ".printer", "symbol": ".shapes", "TensorType": ".types", "verify": ".verifier",
}

if TYPE_CHECKING:
    from .builder import GraphBuilder, OpEmitter, RegionBuilder
    from .core import Graph, Loc, Op, Param, Region, Value
    from .dtypes import DType
    from .errors import IRParseError, LaminaError, VerifyError
    from .interpreter import InterpreterError, interpret
    from .opdef import Category, InferenceError, OpDef
    from .ops import REGISTRY, lookup
    from .parser import parse
    from .printer import print_graph
    from .shapes import symbol
    from .types import TensorType
    from .verifier import verify


__getattr__ = lazy_attributes(__name__, _WHERE, globals())

__all__ = [
    "Category", "DType", "Graph", "GraphBuilder", "IRParseError", "InferenceError", "InterpreterError", "LaminaError",
    "Loc", "Op", "OpDef", "OpEmitter", "Param", "REGISTRY", "Region", "RegionBuilder", "TensorType", "Value",
    "VerifyError", "interpret", "lookup", "parse", "print_graph", "symbol", "verify",
]
