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
class Baked:
    """Argument = a Python number dynamo passes as a 0-d tensor (``dynamic=True`` keeps floats such
    as a norm's eps unspecialised); lamina bakes its value in and keys compiled variants by it."""

    value: Any


@dataclass(frozen=True)
class ArgMap:
    """Where each original argument comes from: a tensor (its position among tensors), a SizeOf, a Baked."""

    sources: tuple[int | SizeOf | Baked, ...]
    tensor_positions: tuple[int, ...]  # original indices of the tensor arguments
    baked_positions: tuple[int, ...] = ()

    def tensors(self, args: Sequence[Any]) -> list[torch.Tensor]:
        return [args[i] for i in self.tensor_positions]

    def baked(self, args: Sequence[Any]) -> tuple:
        """The values of the baked arguments in a call (compiled variants are keyed by them)."""
        return tuple(args[i].item() for i in self.baked_positions)


def _example(node: torch.fx.Node) -> Any:
    return node.meta.get("example_value", node.meta.get("val"))


def _is_wrapped_number(node: torch.fx.Node) -> bool:
    grapharg = node.meta.get("grapharg")
    return bool(getattr(grapharg, "pass_arg_as_tensor", False))


def arg_map(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> ArgMap:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    baked_positions = tuple(i for i, (n, x) in enumerate(zip(placeholders, example_inputs))
                            if isinstance(x, torch.Tensor) and x.dim() == 0 and _is_wrapped_number(n))
    tensor_positions = tuple(i for i, x in enumerate(example_inputs)
                             if isinstance(x, torch.Tensor) and i not in baked_positions)
    dims: dict[str, SizeOf] = {}
    for i in tensor_positions:
        fake = _example(placeholders[i])
        for d, size in enumerate(getattr(fake, "shape", ())):
            if isinstance(size, torch.SymInt):
                dims.setdefault(str(size), SizeOf(i, d))
    sources: list[int | SizeOf | Baked] = []
    for i, x in enumerate(example_inputs):
        if i in baked_positions:
            sources.append(Baked(x.detach().clone()))
        elif isinstance(x, torch.Tensor):
            sources.append(tensor_positions.index(i))
        elif str(x) in dims:
            sources.append(dims[str(x)])
        else:
            raise NotTensorDerived(f"argument {placeholders[i].name} = {x} is not the size of a tensor argument")
    return ArgMap(tuple(sources), tensor_positions, baked_positions)


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
            elif isinstance(source, Baked):
                args.append(source.value)
            else:
                args.append(tensors[source])
        return self.gm(*args)


def dynamic_dims(gm: torch.fx.GraphModule, amap: ArgMap) -> tuple[dict[int, Any], ...] | None:
    """torch.export ``dynamic_shapes`` for ``TensorArgs`` (one varargs parameter): the symbolic dims, or None."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return (symbolic_dims([_example(placeholders[i]) for i in amap.tensor_positions]),) \
        if any(symbolic_dims([_example(placeholders[i]) for i in amap.tensor_positions])) else None


def symbolic_dims(fakes: Sequence[Any]) -> tuple[dict[int, Any] | None, ...]:
    """Per fake tensor, its symbolic dims as ``Dim.AUTO``: dynamic unless the code specialises them
    (a dim the graph fixes becomes static; the backend then compiles again for other values)."""
    return tuple({d: torch.export.Dim.AUTO for d, size in enumerate(fake.shape) if isinstance(size, torch.SymInt)}
                 if isinstance(fake, torch.Tensor) else None for fake in fakes)
