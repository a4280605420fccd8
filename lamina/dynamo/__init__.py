"""``torch.compile(model, backend="lamina")``: lamina as a dynamo backend.

Registered by the ``torch_dynamo_backends`` entry point (no import needed) and by
``import lamina``. Options come through ``torch.compile(..., options={...})``: ``target``
("cpu", "cuda", "reference"), ``pipeline``, ``dump_dir`` (default ``$LAMINA_DUMP_DIR``),
``fallback`` (default True), ``kernel_language``, ``poison``, ``calibration``, ``tp`` (tensor parallelism:
each graph sharded for that many ranks, in the process group torchrun set up; see ``lamina.distributed``).

Per graph dynamo hands over: a graph that needs autograd runs in PyTorch (logged); else
the whole graph is compiled, and if some ops are unsupported, the supported pieces are
compiled and the rest runs in PyTorch, one log line per unsupported op (``LAMINA_LOG=fallback``).
"""
from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx

from ..errors import ExportError, InputMismatchError, UnsupportedOpsError
from ..ir.errors import LaminaError
from ..log import logger
from ..options import CompileOptions
from .graph_args import NotTensorDerived, TensorArgs, arg_map, dynamic_dims

OPTION_KEYS = ("target", "pipeline", "dump_dir", "fallback", "kernel_language", "poison", "calibration", "tp")


@dataclass
class BackendStats:
    """What one backend object has done. ``graphs``: dynamo graphs lamina compiled whole;
    ``partitioned_graphs``: graphs with unsupported ops, split into ``pieces`` lamina compiles (each on
    its first call) around the ops PyTorch runs; ``eager_graphs``: graphs PyTorch runs entirely;
    ``kernels``: generated kernels, of whole graphs and compiled pieces; ``fallback_ops``: what runs in
    PyTorch, and why."""

    graphs: int = 0
    kernels: int = 0
    pieces: int = 0
    partitioned_graphs: int = 0
    eager_graphs: int = 0
    fallback_ops: list[str] = field(default_factory=list)


def compile_options(options: Mapping[str, Any] | None) -> CompileOptions:
    """CompileOptions from ``torch.compile(options=...)``; unknown keys are an error naming the known ones."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise LaminaError(f"unknown lamina option(s) {', '.join(unknown)}; known: {', '.join(OPTION_KEYS)}")
    dump = options.get("dump_dir", os.environ.get("LAMINA_DUMP_DIR"))
    pipeline = options.get("pipeline")
    if options.get("tp", 1) > 1:  # tensor parallelism: every graph sharded; each rank keeps its part
        from ..distributed import sharded_pipeline
        from ..passes.manager import default_pipeline

        pipeline = sharded_pipeline(pipeline or default_pipeline(options.get("target", "cpu")), options["tp"])
    return CompileOptions(backend=options.get("target", "cpu"), pipeline=pipeline,
                          fallback=options.get("fallback", True), dump_dir=Path(dump) if dump else None,
                          poison=options.get("poison", False), kernel_language=options.get("kernel_language"),
                          calibration=options.get("calibration"))


class LaminaBackend:
    """A dynamo backend object; ``stats`` counts its work (useful to assert on recompilation)."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = compile_options(options)
        self.stats = BackendStats()
        self._compiled: list[weakref.ref] = []  # the modules of compiled graphs and pieces, while dynamo keeps them

    def plan_builds(self) -> int:
        """Plans built so far by the programs of this backend's live graphs and pieces (one per program
        whose sizes print as Python, however many lengths a decode loop brings; see ``compiled.plan_cache``)."""
        infos = [m.plan_cache for ref in self._compiled if (m := ref()) is not None]
        return sum(info.builds for info in infos if info is not None)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        from .dump import GraphDump

        start = time.perf_counter()
        dump = GraphDump.create(self.options.dump_dir, gm)
        options = self.options if dump is None else _with_dump(self.options, dump.ir_dir)
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(x, torch.Tensor) and x.requires_grad for x in example_inputs)
        if needs_grad:
            reason = ("the graph needs autograd (grad mode is on and inputs require grad); lamina compiles "
                      "inference graphs: wrap the call in torch.no_grad() or torch.inference_mode()")
            return self._eager(gm, reason, dump, start)
        try:
            amap = arg_map(gm, example_inputs)
        except NotTensorDerived as e:
            return self._eager(gm, str(e), dump, start)
        runner = _GraphRunner(self, gm, amap, options)
        runner.compile(example_inputs)
        if dump is not None:
            dump.finish(runner.last_compiled, runner.last_fallbacks, time.perf_counter() - start,
                        amap.tensors(example_inputs))
        return runner

    def _eager(self, gm: torch.fx.GraphModule, reason: str, dump: Any, start: float) -> Callable[..., Any]:
        logger("fallback").info("graph runs in PyTorch: %s", reason)
        self.stats.eager_graphs += 1
        self.stats.fallback_ops.append(f"whole graph: {reason}")
        if dump is not None:
            dump.finish(None, [f"whole graph: {reason}"], time.perf_counter() - start)
        return gm.forward


class _GraphRunner:
    """What dynamo calls for one graph: the compiled program per set of shapes.

    Usually one program serves all shapes (sizes are symbols). When the graph fixes a size
    that dynamo left dynamic (torch.export specialised it), a call with another value fails
    lamina's input check, and the runner compiles again for those shapes (counted in stats)."""

    def __init__(self, backend: LaminaBackend, gm: torch.fx.GraphModule, amap: Any, options: CompileOptions) -> None:
        self.backend, self.gm, self.amap, self.options = backend, gm, amap, options
        self.module = TensorArgs(gm, amap)
        self.variants: dict[tuple, Callable[..., Any]] = {}
        self.last: Callable[..., Any] | None = None  # the latest compiled variant, and its baked numbers
        self.baked: tuple = ()
        self.last_compiled: Any = None
        self.last_fallbacks: list[str] = []

    @staticmethod
    def key(tensors: Sequence[torch.Tensor]) -> tuple:
        return tuple(tuple(t.shape) for t in tensors)

    def __call__(self, *args: Any) -> Any:
        tensors = self.amap.tensors(args)
        baked = self.amap.baked(args)
        fn = self.last if baked == self.baked else None
        try:
            if fn is None:
                raise InputMismatchError(f"baked numbers {baked} differ from {self.baked}")
            out = fn(*tensors)
        except InputMismatchError as e:
            key = (self.key(tensors), baked)
            if key not in self.variants:
                logger("compile").info("compiling again for shapes %s: %s", key, e)
                self.variants[key] = self.compile(args)
            out = self.variants[key](*tensors)
        return out if isinstance(out, (tuple, list)) else (out,)

    def compile(self, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        """A callable of the tensor arguments (the whole graph compiled, or pieces of it), kept as a variant."""
        start = time.perf_counter()
        stats, amap = self.backend.stats, self.amap
        if amap.baked_positions:  # the graph bakes these numbers in: rebuild the tensor-only module
            self.amap = amap = arg_map(self.gm, example_inputs)
            self.module = TensorArgs(self.gm, amap)
        self.baked = amap.baked(example_inputs)
        tensors = amap.tensors(example_inputs)
        self.last = self._compile(example_inputs, tensors, amap, stats, start)
        self.variants[(self.key(tensors), self.baked)] = self.last
        return self.last

    def _compile(self, example_inputs: Sequence[Any], tensors: Sequence[torch.Tensor], amap: Any, stats: Any,
                 start: float) -> Callable[..., Any]:
        from ..api import compile_imported
        from ..frontends.fx import import_graph_module

        dynamic = dynamic_dims(self.gm, amap)
        try:
            with _inference():
                imported = import_graph_module(self.gm, example_inputs, module=self.module,
                                               positions=amap.tensor_positions, dynamic_shapes=dynamic)
            compiled = compile_imported(imported, self.options, "GraphModule", stateful=False)
        except ExportError as e:  # the graph does not trace (data-dependent shapes): PyTorch runs all of it
            if not self.options.fallback:
                raise
            logger("fallback").info("graph runs in PyTorch: %s", e)
            stats.eager_graphs += 1
            stats.fallback_ops.append(f"whole graph: {e}")
            self.last_fallbacks = [f"whole graph: {e}"]
            return self.module
        except UnsupportedOpsError as e:
            if not self.options.fallback:
                raise
            self.last_fallbacks = [f"{op.target} at {op.module or 'top level'} ({op.node}): {op.reason}; "
                                   "runs in PyTorch" for op in e.ops]
            for line in self.last_fallbacks:
                logger("fallback").info(line)
            stats.fallback_ops += self.last_fallbacks
            from .partition import partitioned

            with _inference():
                run, pieces = partitioned(self.module, tensors, dynamic, {op.node for op in e.ops}, self.options,
                                          self.piece_compiled)
            stats.pieces += pieces
            stats.partitioned_graphs += 1
            logger("compile").info("partitioned a graph into %d lamina piece(s) around %d op(s) PyTorch runs; "
                                   "each piece compiles on its first call", pieces, len(e.ops))
            return run
        self.last_compiled = compiled
        self.piece_compiled("a graph", compiled, start)
        self.backend.stats.graphs += 1
        return compiled

    def piece_compiled(self, what: str, compiled: Any, start: float) -> None:
        """Count and log a compiled graph or piece."""
        kernels = len(getattr(compiled._executor, "kernels", {}))
        self.backend.stats.kernels += kernels
        self.backend._compiled.append(weakref.ref(compiled))
        logger("compile").info("compiled %s of %d ops into %d kernels in %.2f s", what, len(compiled.graph.ops),
                               kernels, time.perf_counter() - start)


def _with_dump(options: CompileOptions, directory: Path) -> CompileOptions:
    from dataclasses import replace

    return replace(options, dump_dir=directory)


class _inference:
    """Trace under no_grad, out of inference mode (torch.export cannot trace inside it) and out of
    dynamo's tracing context (export's shape guards would otherwise land in dynamo's guards)."""

    def __init__(self) -> None:
        self.stack: list[Any] = []

    def __enter__(self) -> None:
        from torch._guards import tracing

        for ctx in (tracing(None), torch.inference_mode(False), torch.no_grad()):
            ctx.__enter__()
            self.stack.append(ctx)

    def __exit__(self, *exc: Any) -> None:
        for ctx in reversed(self.stack):
            ctx.__exit__(*exc)


def lamina_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any],
                   options: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """The function registered as dynamo backend "lamina"."""
    return LaminaBackend(options)(gm, example_inputs)


def register() -> None:
    """Make ``backend="lamina"`` known to torch.compile (the entry point does this without an import)."""
    from torch._dynamo.backends.registry import _BACKENDS, _COMPILER_FNS, register_backend

    if "lamina" in _COMPILER_FNS or _BACKENDS.get("lamina") is not None:
        return  # registered, or found as an entry point that torch registers once loaded
    register_backend(name="lamina")(lamina_backend)
