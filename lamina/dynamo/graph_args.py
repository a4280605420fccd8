"""Turn the arguments dynamo passes a backend into tensors only, with their symbolic dims.

With dynamic shapes dynamo passes sizes as ``SymInt`` placeholders beside the tensors whose
dims they are. ``TensorArgs`` finds, for each such size, a tensor dim it equals, so the
compiled program takes tensors only and reads sizes from their shapes; the dims that are
symbolic become ``torch.export`` dynamic dims, hence symbols in lamina's IR, so a new batch
size or sequence length reuses the kernels.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx


class NotTensorDerived(Exception):
    """A size argument equals no dim of any tensor argument."""


@dataclass(frozen=True)
class SizeOf:
    """Argument = dim ``dim`` of tensor argument ``tensor`` (an index into the original arguments)."""

    tensor: int
    dim: int


@dataclass(frozen=True)
class ArgMap:
    """Where each original argument comes from: a tensor (its position among tensors) or a SizeOf."""

    sources: tuple[int | SizeOf, ...]
    tensor_positions: tuple[int, ...]  # original indices of the tensor arguments

    def tensors(self, args: Sequence[Any]) -> list[torch.Tensor]:
        return [args[i] for i in self.tensor_positions]


def _example(node: torch.fx.Node) -> Any:
    return node.meta.get("example_value", node.meta.get("val"))


def arg_map(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> ArgMap:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    tensor_positions = tuple(i for i, x in enumerate(example_inputs) if isinstance(x, torch.Tensor))
    dims: dict[str, SizeOf] = {}
    for i in tensor_positions:
        fake = _example(placeholders[i])
        for d, size in enumerate(getattr(fake, "shape", ())):
            if isinstance(size, torch.SymInt):
                dims.setdefault(str(size), SizeOf(i, d))
    sources: list[int | SizeOf] = []
    for i, x in enumerate(example_inputs):
        if isinstance(x, torch.Tensor):
            sources.append(tensor_positions.index(i))
        elif str(x) in dims:
            sources.append(dims[str(x)])
        else:
            raise NotTensorDerived(f"argument {placeholders[i].name} = {x} is not the size of a tensor argument")
    return ArgMap(tuple(sources), tensor_positions)


class TensorArgs(torch.nn.Module):
    """``gm`` called with tensors only; size arguments are read from the tensors' shapes."""

    def __init__(self, gm: torch.fx.GraphModule, amap: ArgMap) -> None:
        super().__init__()
        self.gm = gm
        self.amap = amap

    def forward(self, *tensors: torch.Tensor) -> Any:
        args = []
        for source in self.amap.sources:
            if isinstance(source, SizeOf):
                args.append(tensors[self.amap.tensor_positions.index(source.tensor)].shape[source.dim])
            else:
                args.append(tensors[source])
        return self.gm(*args)


def dynamic_dims(gm: torch.fx.GraphModule, amap: ArgMap) -> tuple[dict[int, Any], ...] | None:
    """torch.export ``dynamic_shapes`` for ``TensorArgs`` (one varargs parameter): the symbolic dims, or None."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return (symbolic_dims([_example(placeholders[i]) for i in amap.tensor_positions]),) \
        if any(symbolic_dims([_example(placeholders[i]) for i in amap.tensor_positions])) else None


def symbolic_dims(fakes: Sequence[Any]) -> tuple[dict[int, Any] | None, ...]:
    """Per fake tensor, its symbolic dims as torch.export Dims; one Dim per dynamo symbol, so dims
    dynamo knows to be equal (a key cache's and a value cache's length) stay equal in the export."""
    named: dict[str, Any] = {}
    specs: list[dict[int, Any] | None] = []
    for fake in fakes:
        if not isinstance(fake, torch.Tensor):
            specs.append(None)
            continue
        spec = {}
        for d, size in enumerate(fake.shape):
            if isinstance(size, torch.SymInt):
                key = str(size)
                if key not in named:
                    named[key] = torch.export.Dim(f"d_{len(named)}") if key.isidentifier() else torch.export.Dim.DYNAMIC
                spec[d] = named[key]
        specs.append(spec)
    return tuple(specs)
