"""Builders that make ops through the registry: attributes completed, result types inferred."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .core import UNKNOWN, Graph, Loc, Op, Param, Region, Value
from .opdef import InferenceError
from .ops.structural import region_result_types
from .ops import lookup
from .types import TensorType


class OpEmitter:
    """Collects ops in order; ``emit`` creates one op with inferred result types."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def emit_op(self, name: str, operands: Sequence[Value], attrs: Mapping[str, Any] | None = None,
                loc: Loc = UNKNOWN, regions: Sequence[Region] = ()) -> Op:
        """Create, append and return op ``name``; raises InferenceError naming the op and location."""
        opdef = lookup(name)
        try:
            full = opdef.complete_attrs(attrs or {})
            if regions:
                types = region_result_types(name, regions, full)
            else:
                types = list(opdef.infer_types([v.type for v in operands], full))
        except InferenceError as e:
            message = str(e) if str(e).startswith(name) else f"{name}: {e}"
            raise InferenceError(message + (f" (module {loc.module})" if loc.module else "")) from None
        op = Op(name, tuple(operands), tuple(Value(t) for t in types), full, tuple(regions), loc)
        self.ops.append(op)
        return op

    def emit(self, name: str, *operands: Value, loc: Loc = UNKNOWN, **attrs: Any) -> Value:
        """Emit a single-result op and return its result."""
        return self.emit_op(name, operands, attrs, loc).result

    def append(self, op: Op) -> Op:
        self.ops.append(op)
        return op

    def append_copy(self, op: Op, operands: Sequence[Value]) -> Op:
        """Append a copy of ``op`` reading ``operands``, with fresh result values (inlining a region)."""
        return self.append(op.replace(operands=tuple(operands), results=tuple(Value(r.type) for r in op.results)))


class RegionBuilder(OpEmitter):
    """Builds one region: block arguments of given types, ops, then ``finish(yielded)``."""

    def __init__(self, arg_types: Sequence[TensorType]) -> None:
        super().__init__()
        self.args = tuple(Value(t) for t in arg_types)

    def finish(self, results: Sequence[Value]) -> Region:
        return Region(self.args, tuple(self.ops) + (Op("yield", tuple(results), ()),))


class GraphBuilder(OpEmitter):
    """Builds a Graph: ``input``, ``param``, ops via ``emit``, then ``build(outputs)``."""

    def __init__(self, name: str = "forward") -> None:
        super().__init__()
        self.name = name
        self.inputs: list[Value] = []
        self.params: list[Param] = []

    def input(self, type: TensorType, name: str | None = None) -> Value:
        value = Value(type, name)
        self.inputs.append(value)
        return value

    def param(self, key: str, type: TensorType) -> Value:
        value = Value(type, key)
        self.params.append(Param(key, value))
        return value

    def build(self, outputs: Sequence[Value], history: tuple[str, ...] = ()) -> Graph:
        return Graph(self.name, tuple(self.inputs), tuple(self.params), tuple(self.ops), tuple(outputs), history)
