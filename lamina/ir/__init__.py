"""lamina's graph IR: types, values, ops, graphs, the op registry, text form, verifier, interpreter."""
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

__all__ = [
    "DType", "Graph", "GraphBuilder", "IRParseError", "InferenceError", "InterpreterError", "Category", "LaminaError",
    "Loc", "Op", "OpDef", "OpEmitter", "Param", "REGISTRY", "Region", "RegionBuilder", "TensorType", "Value",
    "VerifyError", "interpret", "lookup", "parse", "print_graph", "symbol", "verify",
]
