"""Graphviz dot form of a Graph, for ``lamina dump --format dot``."""
from __future__ import annotations

import json

from .core import Graph, Op
from .printer import Namer


def to_dot(graph: Graph) -> str:
    """One node per input, parameter and op (labelled with type and module path); edges follow data."""
    name = Namer(graph)
    lines = [f"digraph {json.dumps(graph.name)} {{", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];']
    producer: dict[int, str] = {}
    for v in graph.inputs:
        producer[id(v)] = name(v)
        lines.append(f"  {json.dumps(name(v))} [label={json.dumps(f'{name(v)}: {v.type}')}, shape=ellipse];")
    for p in graph.params:
        producer[id(p.value)] = name(p.value)
        lines.append(f"  {json.dumps(name(p.value))} [label={json.dumps(f'{p.key}: {p.value.type}')}, "
                     "shape=note, color=gray];")
    for i, op in enumerate(graph.ops):
        node = f"op{i}"
        lines.append(f"  {node} [label={json.dumps(_label(op, name))}];")
        for v in op.operands:
            if id(v) in producer:
                lines.append(f"  {json.dumps(producer[id(v)])} -> {node};")
        for v in op.results:
            producer[id(v)] = node
    for i, v in enumerate(graph.outputs):
        lines.append(f'  out{i} [label="return {i}", shape=ellipse];')
        lines.append(f"  {json.dumps(producer[id(v)])} -> out{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _label(op: Op, name: Namer) -> str:
    results = ", ".join(name(v) for v in op.results)
    types = ", ".join(str(v.type) for v in op.results)
    label = f"{results} = {op.name} : {types}"
    if op.regions:
        label += f"\\n({sum(len(r.ops) - 1 for r in op.regions)} ops inside)"
    if op.loc.module:
        label += f"\\n{op.loc.module}"
    return label
