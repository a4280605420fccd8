"""The text form of a Graph (MLIR-like); ``parser.parse`` reads it back identically."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

import sympy

from .core import Graph, Op, Region, Value
from .dtypes import DType
from .ops import is_terminator
from .shapes import format_dim

NAME_RE = re.compile(r"[A-Za-z0-9_.]+")
_INDENT = "  "


class Namer:
    """Printed names: inputs and params keep valid, unique hints; other values are numbered."""

    def __init__(self, graph: Graph | None = None) -> None:
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.counter = 0
        if graph is not None:
            for i, v in enumerate(graph.inputs):
                self.named(v, v.hint, f"arg{i}")
            for i, p in enumerate(graph.params):
                self.named(p.value, p.key, f"param{i}")
            for op in graph.walk():
                self.numbered(op.results)
                for region in op.regions:
                    self.numbered(region.args)

    def named(self, value: Value, hint: str | None, fallback: str) -> str:
        name = hint if hint and NAME_RE.fullmatch(hint) and not hint.isdigit() else fallback
        base, k = name, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        self.names[id(value)] = name
        return name

    def numbered(self, values: Iterable[Value]) -> None:
        for v in values:
            if id(v) not in self.names:
                self.names[id(v)] = str(self.counter)
                self.counter += 1

    def __call__(self, value: Value) -> str:
        try:
            return "%" + self.names[id(value)]
        except KeyError:
            return f"%<undefined {value.type}>"


def format_attr(value: Any) -> str:
    """One attribute value in the text syntax."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, DType):
        return value.value
    if isinstance(value, sympy.Expr):
        return format_dim(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    raise TypeError(f"cannot print attribute value {value!r} of type {type(value).__name__}")


def format_attrs(attrs: dict[str, Any]) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in attrs.items()) + "}"


def _print_op(op: Op, name: Namer, depth: int, out: list[str]) -> None:
    pad = _INDENT * depth
    if is_terminator(op):
        out.append(f"{pad}{op.name} " + ", ".join(name(v) for v in op.operands) if op.operands else f"{pad}{op.name}")
        return
    lhs = ", ".join(name(v) for v in op.results)
    head = f"{pad}{lhs} = " if lhs else pad
    text = f"{head}{op.name}({', '.join(name(v) for v in op.operands)}){format_attrs(dict(op.attrs))}"
    if op.regions:
        out.append(text + " {")
        for i, region in enumerate(op.regions):
            if i:
                out.append(f"{pad}}} {{")
            _print_region(region, name, depth + 1, out)
        text = f"{pad}}}"
    if op.results:
        text += " : " + ", ".join(str(v.type) for v in op.results)
    loc = str(op.loc)
    out.append(f"{text}  # {loc}" if loc else text)


def _print_region(region: Region, name: Namer, depth: int, out: list[str]) -> None:
    args = ", ".join(f"{name(a)}: {a.type}" for a in region.args)
    out.append(f"{_INDENT * (depth - 1)}^({args}):")
    for op in region.ops:
        _print_op(op, name, depth, out)


def print_graph(graph: Graph, history: bool = False) -> str:
    """The text form; with ``history`` the passes that produced the graph lead as comments."""
    name = Namer(graph)
    out = [f"// {h}" for h in graph.history] if history else []
    inputs = ", ".join(f"{name(v)}: {v.type}" for v in graph.inputs)
    header = f"graph @{graph.name}({inputs})"
    if graph.params:
        lines = []
        for p in graph.params:
            key = "" if name(p.value)[1:] == p.key else f" {json.dumps(p.key)}"
            cut = f" shard({p.shard.dim}, {p.shard.parts}, {p.shard.blocks})" if p.shard else ""
            lines.append(f"{_INDENT * 2}{name(p.value)}: {p.value.type}{key}{cut}")
        header += " params(\n" + ",\n".join(lines) + "\n)"
    if graph.states:  # the last inputs, kept by the runtime between calls; the last outputs are their new values
        lines = [f"{_INDENT * 2}{name(s.value)} = {format_attr(s.init)}"
                 + ("" if name(s.value)[1:] == s.key else f" {json.dumps(s.key)}") for s in graph.states]
        header += " states(\n" + ",\n".join(lines) + "\n)"
    out.append(header + " {")
    for op in graph.ops:
        _print_op(op, name, 1, out)
    out.append(f"{_INDENT}return " + ", ".join(name(v) for v in graph.outputs))
    out.append("}")
    return "\n".join(out) + "\n"
