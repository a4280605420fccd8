"""The graph IR: SSA values, ops with optional regions, and graphs.

All objects are immutable; a pass builds a new Graph and may share unchanged
Values and Ops with its input. Values are compared by identity.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .types import TensorType


@dataclass(frozen=True, eq=False)
class Value:
    """An SSA value. ``hint`` is a preferred printed name (inputs and parameters)."""

    type: TensorType
    hint: str | None = None

    def __repr__(self) -> str:
        return f"Value({self.hint or hex(id(self))}: {self.type})"


@dataclass(frozen=True)
class Loc:
    """Where an op came from: the module path (``h.3.attn.c_proj``) and torch target."""

    module: str = ""
    target: str = ""

    def __str__(self) -> str:
        text = self.module
        if self.target:
            text = f"{text} ({self.target})" if text else f"({self.target})"
        return text


UNKNOWN = Loc()


@dataclass(frozen=True, eq=False)
class Region:
    """A single-block region: arguments and ops, the last of which is ``yield``."""

    args: tuple[Value, ...]
    ops: tuple["Op", ...]

    @property
    def results(self) -> tuple[Value, ...]:
        """The values the terminating ``yield`` returns."""
        return self.ops[-1].operands if self.ops else ()


@dataclass(frozen=True, eq=False)
class Op:
    """One operation: ``results = name(operands) {attrs} regions``."""

    name: str
    operands: tuple[Value, ...]
    results: tuple[Value, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()
    loc: Loc = UNKNOWN

    @property
    def result(self) -> Value:
        """The single result of a one-result op."""
        if len(self.results) != 1:
            raise ValueError(f"op {self.name} has {len(self.results)} results, not one")
        return self.results[0]

    def replace(self, **changes: Any) -> "Op":
        return replace(self, **changes)

    def describe(self) -> str:
        """A short description for error messages: name and source location."""
        where = f" at {self.loc.module}" if self.loc.module else ""
        return f"{self.name}{where}"


@dataclass(frozen=True, eq=False)
class Param:
    """A named weight: its SSA value and its state-dict key; ``shard``: this rank's part of it (tensor
    parallelism), the value's type being the part's."""

    key: str
    value: Value
    shard: "Shard | None" = None


@dataclass(frozen=True)
class Shard:
    """A weight cut along ``dim`` into ``parts`` (one per rank). With ``blocks`` > 1 the dim is that many
    equal blocks (a fused query-key-value weight), each cut alike, and a rank's part joins its piece of
    each block."""

    dim: int
    parts: int
    blocks: int = 1

    def take(self, full: Any, rank: int) -> Any:
        """Rank ``rank``'s part of the whole weight ``full`` (a torch tensor or NumPy array)."""
        size = full.shape[self.dim]
        if size % (self.blocks * self.parts):
            raise ValueError(f"dim {self.dim} of size {size} does not split into {self.blocks} blocks of "
                             f"{self.parts} parts")
        step = size // self.blocks
        width = step // self.parts
        pieces = [_narrow(full, self.dim, b * step + rank * width, width) for b in range(self.blocks)]
        if len(pieces) == 1:
            return pieces[0]
        return _concat(pieces, self.dim)


@dataclass(frozen=True, eq=False)
class State:
    """A tensor the compiled program keeps between calls (a layer-skip decision, a cached output).

    It is one of the graph's last inputs (``value``), and the output in the same place among the
    graph's last outputs is its new value; the runtime holds it under ``key`` (so the prefill and the
    decode program of one model can share it), filled with ``init`` before the first call."""

    key: str
    value: Value
    init: float


@dataclass(frozen=True, eq=False)
class Graph:
    """A function of tensors: inputs, named parameters, ops in order, outputs.

    ``states``: the last ``len(states)`` inputs are tensors the runtime keeps between calls, and the
    last ``len(states)`` outputs their new values, in the same order (see ``State``)."""

    name: str
    inputs: tuple[Value, ...]
    params: tuple[Param, ...]
    ops: tuple[Op, ...]
    outputs: tuple[Value, ...]
    history: tuple[str, ...] = ()
    states: tuple[State, ...] = ()

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)

    def replace(self, **changes: Any) -> "Graph":
        return replace(self, **changes)

    def param(self, key: str) -> Param:
        for p in self.params:
            if p.key == key:
                return p
        raise KeyError(f"graph @{self.name} has no parameter {key!r}")

    @property
    def user_inputs(self) -> tuple[Value, ...]:
        """The inputs a caller passes: all but the states."""
        return self.inputs[:len(self.inputs) - len(self.states)]

    @property
    def user_outputs(self) -> tuple[Value, ...]:
        """The outputs a caller receives: all but the states' new values."""
        return self.outputs[:len(self.outputs) - len(self.states)]

    def walk(self) -> Iterator[Op]:
        """Every op, nested region ops included, in program order."""
        yield from walk_ops(self.ops)


def walk_ops(ops: tuple[Op, ...]) -> Iterator[Op]:
    for op in ops:
        yield op
        for region in op.regions:
            yield from walk_ops(region.ops)


def region_graph(region: Region, name: str = "body") -> Graph:
    """A region as a graph: its arguments are the inputs, its terminator's operands the outputs."""
    return Graph(name, tuple(region.args), (), tuple(region.ops[:-1]), tuple(region.results))


def producers(ops: Iterable[Op]) -> dict[Value, Op]:
    """The op defining each result of ``ops``."""
    return {v: op for op in ops for v in op.results}


def users(ops: Iterable[Op]) -> dict[Value, list[Op]]:
    """The ops of ``ops`` reading each value, in order (an op reading a value twice is listed twice)."""
    found: dict[Value, list[Op]] = {}
    for op in ops:
        for v in op.operands:
            found.setdefault(v, []).append(op)
    return found


def _narrow(x: Any, dim: int, start: int, length: int) -> Any:
    index = [slice(None)] * len(x.shape)
    index[dim] = slice(start, start + length)
    return x[tuple(index)]


def _concat(pieces: list[Any], dim: int) -> Any:
    if hasattr(pieces[0], "numpy"):  # torch
        import torch

        return torch.cat(pieces, dim)
    import numpy as np

    return np.concatenate(pieces, dim)
