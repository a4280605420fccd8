"""Partial support: compile the supported pieces of a graph, run the rest in PyTorch.

The graph is exported to ATen (as for a whole-graph compile); nodes lamina cannot translate
are kept out, and torch.fx's capability partitioner groups the others into maximal
submodules without cycles. Each submodule is compiled by lamina on its first call (when its
inputs are known); the unsupported nodes run as ordinary ATen calls in between.
"""
from __future__ import annotations

import operator
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from ..frontends.fx import SYMBOLIC, _target_name, export
from ..frontends.fx import import_graph_module as _import
from ..errors import UnsupportedOpsError
from ..log import logger
from ..options import CompileOptions
from .graph_args import symbolic_dims

OnCompiled = Callable[[str, Any, float], None]


class _Supported(OperatorSupportBase):
    def __init__(self, unsupported: set[str]) -> None:
        self.unsupported = unsupported

    def is_node_supported(self, submodules: Any, node: torch.fx.Node) -> bool:
        if node.op != "call_function" or node.name in self.unsupported:
            return False
        if node.target is operator.getitem:
            return node.args[0].name not in self.unsupported  # type: ignore[union-attr]
        # size arithmetic stays outside: a piece returns tensors only
        return _target_name(node.target) not in SYMBOLIC and isinstance(node.meta.get("val"), (torch.Tensor, tuple, list))


class LazyPiece(torch.nn.Module):
    """A supported submodule, compiled by lamina on first call (once per set of non-tensor arguments)."""

    def __init__(self, gm: torch.fx.GraphModule, options: CompileOptions, name: str, on_compiled: OnCompiled) -> None:
        super().__init__()
        self.gm, self.options, self.piece, self.on_compiled = gm, options, name, on_compiled
        self.compiled: dict[tuple, Any] = {}

    def forward(self, *args: Any) -> Any:
        key = tuple(a for a in args if not isinstance(a, torch.Tensor))
        fn = self.compiled.get(key)
        if fn is None:
            fn = self.compiled[key] = self._compile(args)
        return fn(*args)

    def _compile(self, args: Sequence[Any]) -> Any:
        from ..api import compile_imported

        start = time.perf_counter()
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        dynamic = symbolic_dims([n.meta.get("val") if isinstance(a, torch.Tensor) else None
                                 for n, a in zip(placeholders, args)])
        try:
            imported = _import(self.gm, args, dynamic_shapes=dynamic if any(dynamic) else None)
        except UnsupportedOpsError as e:  # ops whose inputs failed before were not checked then
            for op in e.ops:
                logger("fallback").info("%s at %s (%s): %s; runs in PyTorch", op.target, op.module or "top level",
                                        op.node, op.reason)
            return self.gm
        compiled = compile_imported(imported, self.options, self.piece, stateful=False)
        self.on_compiled(f"piece {self.piece}", compiled, start)
        return compiled


def partitioned(module: torch.nn.Module, tensors: Sequence[torch.Tensor], dynamic_shapes: Any,
                unsupported: set[str], options: CompileOptions,
                on_compiled: OnCompiled) -> tuple[Callable[..., tuple], int]:
    """A callable of ``tensors`` running ``module`` with lamina pieces, and the number of pieces;
    ``on_compiled(what, compiled, start)`` is told of each piece when it compiles."""
    ep = export(module, tuple(t.detach() for t in tensors), dynamic_shapes=dynamic_shapes)
    gm = ep.graph_module
    fused = CapabilityBasedPartitioner(gm, _Supported(unsupported), allows_single_node_partition=True) \
        .partition_and_fuse()
    pieces = 0
    for name, child in list(fused.named_children()):
        if name.startswith("fused_"):
            setattr(fused, name, LazyPiece(child, options, name, on_compiled))
            pieces += 1
    from torch.export.graph_signature import InputKind, OutputKind

    state = {**ep.state_dict, **ep.constants}
    feeds: list[Any] = []
    user_position: dict[str, int] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            user_position[spec.arg.name] = len(user_position)
            feeds.append(user_position[spec.arg.name])
        else:
            feeds.append(state[spec.target])
    keep = [i for i, spec in enumerate(ep.graph_signature.output_specs) if spec.kind == OutputKind.USER_OUTPUT]
    # in-place updates (a batch norm's running statistics, an input the graph mutates): written back
    updates = {i: user_position[spec.target] if spec.kind == OutputKind.USER_INPUT_MUTATION else state[spec.target]
               for i, spec in enumerate(ep.graph_signature.output_specs)
               if spec.kind in (OutputKind.USER_INPUT_MUTATION, OutputKind.BUFFER_MUTATION)}

    def run(*args: torch.Tensor) -> tuple:
        out = fused(*[args[f] if isinstance(f, int) else f for f in feeds])
        out = out if isinstance(out, (tuple, list)) else (out,)
        with torch.no_grad():
            for i, target in updates.items():
                (args[target] if isinstance(target, int) else target).copy_(out[i])
        return tuple(out[i] for i in keep)

    return run, pieces
