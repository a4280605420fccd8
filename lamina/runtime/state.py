"""ProgramState: the tensors compiled programs keep between calls (``Graph.states``), by key.

A layer-skip decision made at prefill (``skip{policy=router}``) and a layer output reused for a few
tokens (``skip{policy=temporal}``) live here. The prefill and the decode program of one model share
them when compiled with the same ``ProgramState`` (``lamina.compile(..., state=shared)``): their
states have the same keys (the module paths of the layers). ``reset()`` starts new sequences.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from ..errors import InputMismatchError
from ..ir.core import Graph
from ..ir.dtypes import to_torch


class ProgramState:
    """Tensors by key, created on first use from their state's initial value; one call at a time."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.lock = threading.RLock()  # a call reads and replaces its states as one step

    def reset(self) -> None:
        """Forget every tensor: the next call starts from the initial values (new sequences)."""
        with self.lock:
            self.tensors.clear()

    def inputs(self, graph: Graph, shapes: Sequence[tuple[int, ...]], device: str) -> list[torch.Tensor]:
        """The current value of each of ``graph``'s states, which this call needs in ``shapes``."""
        out = []
        for s, shape in zip(graph.states, shapes):
            held = self.tensors.get(s.key)
            if held is None:
                held = torch.full(shape, s.init, dtype=to_torch(s.value.type.dtype), device=device)
            elif tuple(held.shape) != shape:
                raise InputMismatchError(
                    f"state {s.key!r} holds shape {list(held.shape)} from earlier calls but this call needs "
                    f"{list(shape)} (a new batch size?): call reset() on the program state to start new sequences")
            out.append(held)
        return out

    def update(self, graph: Graph, values: Sequence[torch.Tensor]) -> None:
        """Keep the new values a call returned for ``graph``'s states."""
        for s, v in zip(graph.states, values):
            self.tensors[s.key] = v

    def __repr__(self) -> str:
        return f"ProgramState({', '.join(self.tensors) or 'empty'})"

