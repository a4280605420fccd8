"""Binding a graph's size symbols from its inputs' shapes, per call, without SymPy.

``bind_symbols`` (the interpreter's) solves each dim with SymPy: right for any dim, too slow for
a decode loop where every call brings a new length. A ``ShapeBinder`` generates, once per graph,
a Python function that reads each symbol where an input has it as a plain dim and checks every
other dim against it; only graphs with a symbol that appears solely inside expressions (``2*T``)
take the SymPy path, and so do mismatches, to get bind_symbols' message.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sympy

from .interpreter import bind_symbols
from .size_code import NotPrintable, python_code, size_tuple, size_variable


class ShapeMismatch(ValueError):
    """Input shapes that do not fit the graph's input types."""


class ShapeBinder:
    """``binder(shapes)``: the values of ``binder.symbols`` for these input shapes; ShapeMismatch (a
    ValueError naming the expected and the actual shape) when the shapes do not fit the types."""

    def __init__(self, types: Sequence[Any]) -> None:
        self.types = tuple(types)
        self.symbols: tuple[sympy.Symbol, ...] = tuple(sorted(
            {s for t in self.types for d in t.shape if not isinstance(d, int) for s in d.free_symbols}, key=str))
        self.source = self._source()
        self._fast = None
        if self.source is not None:
            scope: dict[str, Any] = {}
            exec(compile(self.source, "<lamina shape binder>", "exec"), scope)  # noqa: S102 - our own code
            self._fast = scope["bind"]

    def __call__(self, shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
        values = self._fast(shapes) if self._fast is not None else None
        if values is None:
            # shapes only: broadcast views of one element, whatever the sizes
            arrays = [np.broadcast_to(np.empty((), dtype=bool), tuple(s)) for s in shapes]
            if len(arrays) != len(self.types):
                raise ShapeMismatch(f"expected {len(self.types)} inputs, got {len(arrays)}")
            try:
                bindings = bind_symbols(self.types, arrays)
            except ValueError as e:
                raise ShapeMismatch(str(e)) from None
            values = tuple(bindings[s] for s in self.symbols)
        return values

    def _source(self) -> str | None:
        """The fast binder's source, or None when a symbol is never a plain dim of an input."""
        direct: dict[sympy.Symbol, str] = {}
        checks: list[str] = []
        for i, t in enumerate(self.types):
            for j, d in enumerate(t.shape):
                here = f"d{i}[{j}]"
                if isinstance(d, int):
                    checks.append(f"{here} != {d}")
                elif d.is_Symbol and d not in direct:
                    direct[d] = here
        if set(direct) != set(self.symbols):
            return None
        lines = [f"if len(shapes) != {len(self.types)}:", "    return None"]
        for i, t in enumerate(self.types):
            lines += [f"d{i} = shapes[{i}]", f"if len(d{i}) != {t.rank}:", "    return None"]
        lines += [f"{size_variable(s)} = {where}" for s, where in direct.items()]
        checks += [f"{size_variable(s)} < 1" for s in self.symbols]  # symbols are positive
        for i, t in enumerate(self.types):
            for j, d in enumerate(t.shape):
                if not isinstance(d, int) and direct.get(d) != f"d{i}[{j}]":
                    try:
                        checks.append(f"d{i}[{j}] != {python_code(d, size_variable)}")
                    except NotPrintable:
                        return None
        if checks:
            lines += ["if (" + "\n        or ".join(checks) + "):", "    return None"]
        lines.append(f"return ({size_tuple(self.symbols)})")
        return "def bind(shapes):\n" + "\n".join("    " + line for line in lines) + "\n"
