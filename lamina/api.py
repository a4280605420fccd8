"""The public entry points: trace, compile, run_pipeline, default_pipeline."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .errors import UnsupportedOpsError
from .frontends.fx import Imported, import_module
from .ir.core import Graph
from .options import CompileOptions
from .backends import backend as entry
from .passes.manager import backend_pipeline, default_pipeline, run_pipeline, run_steps
from .runtime.compiled import CompiledModule


def _as_args(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def trace(model: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor,
          example_kwargs: Mapping[str, Any] | None = None, dynamic_shapes: Any = None) -> Graph:
    """The lamina Graph of ``model(*example_inputs, **example_kwargs)``.

    ``dynamic_shapes`` is passed to ``torch.export`` (e.g. ``({0: torch.export.Dim("batch")},)``);
    such dims become symbols in the IR.
    """
    return import_module(model, _as_args(example_inputs), example_kwargs, dynamic_shapes).graph


def compile(model: torch.nn.Module, example_inputs: Sequence[Any] | torch.Tensor, *, backend: str = "cpu",
            pipeline: str | None = None, fallback: bool = True, example_kwargs: Mapping[str, Any] | None = None,
            dynamic_shapes: Any = None, dump_dir: str | None = None, poison: bool = False,
            kernel_language: str | None = None, calibration: Any = None, state: Any = None) -> CompiledModule:
    """Compile ``model`` for inputs like ``example_inputs``; the result is called like the model.

    ``pipeline`` is a pass-pipeline string (``None``: ``default_pipeline(backend)``).
    Unsupported ops raise UnsupportedOpsError listing all of them; with ``fallback``
    true (the default) the whole model then runs in eager PyTorch instead, with a
    warning that names the ops (per-op partitioning is the torch.compile backend's job).
    ``dynamic_shapes`` (torch.export's) makes dims symbolic, so other sizes run without recompiling;
    ``"auto"`` lets every dim of every tensor input vary that the model does not fix (a decode step with a
    growing KV cache).
    ``backend="cuda"`` runs CUDA C kernels through CuPy, or Numba-CUDA with ``kernel_language="numba"``;
    ``backend="cpu"`` runs Numba kernels, or C kernels in one shared library with ``kernel_language="c"``.
    ``poison`` fills every buffer with NaN (or -7) before each run, so unwritten elements show (for tests).
    ``calibration`` (``lamina.calibrate(model, batches)``) feeds the passes that choose per layer, such as
    ``quantize{budget=5.0}``.
    ``state`` (a ``lamina.ProgramState``): where a program whose passes keep tensors between calls
    (``skip{policy=router|temporal}``) keeps them; give the prefill and the decode module of one model the
    same one, and ``reset()`` it before new sequences. Default: the compiled module's own (``.state``).

    The model is traced in the mode it is in: in training mode, dropout (p > 0) and batch norm (which
    updates its running statistics) are unsupported ops, so call ``model.eval()`` first. The compiled
    module computes no gradients (it warns when called with weights or inputs that require them).
    """
    from pathlib import Path

    options = CompileOptions(backend=backend, pipeline=pipeline, fallback=fallback,
                             dump_dir=Path(dump_dir) if dump_dir else None, poison=poison,
                             kernel_language=kernel_language, calibration=calibration, state=state)
    backend_pipeline(pipeline, backend)  # bad pipelines and backends fail first
    entry(backend).check()  # a backend the machine cannot run (no GPU) fails before tracing, with the reason
    model_name = type(model).__name__
    try:  # traced in the mode it is in: a training-mode dropout or batch norm is reported, never switched off
        imported = import_module(model, _as_args(example_inputs), example_kwargs, dynamic_shapes)
    except UnsupportedOpsError as e:
        if not fallback:
            raise
        return _eager_fallback(model, e)
    return compile_imported(imported, options, model_name)


def compile_imported(imported: Imported, options: CompileOptions, model_name: str = "model",
                     stateful: bool = True) -> CompiledModule:
    """Run the pipeline on a translated model and build its executor; ``stateful`` false refuses a program
    that keeps tensors between calls (torch.compile's graphs: dynamo may recompile, and the state with it)."""
    steps = backend_pipeline(options.pipeline, options.backend)
    result = run_steps(imported.graph, steps, dump_dir=options.dump_dir, check=options.verify,
                       calibration=options.calibration)
    if result.graph.states and not stateful:
        from .errors import LaminaError

        raise LaminaError(f"pipeline {options.pipeline!r} makes a program that keeps tensors between calls "
                          f"({', '.join(s.key for s in result.graph.states)}), which torch.compile's graphs cannot "
                          "hold; use lamina.compile(model, inputs, pipeline=..., state=lamina.ProgramState()) instead")
    executor = entry(options.backend).make_executor(result.graph, options)
    compiled = CompiledModule(imported, result.graph, executor, options, result.timings, model_name)
    shards = [p.shard.parts for p in result.graph.params if p.shard is not None]
    if shards:  # a tensor-parallel program: this rank keeps its part of each split weight
        from .distributed import this_rank

        compiled.take_shards(this_rank(result.graph.name, shards[0]))
    return compiled


def compile_lowered(imported: Imported, backend: str, model_name: str = "model",
                    kernel_language: str | None = None) -> CompiledModule:
    """A CompiledModule of a graph the pipeline already lowered (``lamina.load``): no passes run;
    ``kernel_language``: the backend's (None: its default)."""
    from .ir.verifier import verify

    verify(imported.graph)
    options = CompileOptions(backend=backend, kernel_language=kernel_language)
    entry(backend).check()
    executor = entry(backend).make_executor(imported.graph, options)
    return CompiledModule(imported, imported.graph, executor, options, (), model_name)


def _eager_fallback(model: torch.nn.Module, error: UnsupportedOpsError) -> Any:
    import warnings

    warnings.warn(f"lamina: running {type(model).__name__} eagerly (fallback=True): {error.summary}\n"
                  "To compile it, rewrite those parts with supported ops (`lamina ops` lists them); "
                  "fallback=False raises this error instead.", RuntimeWarning, stacklevel=3)
    return model


__all__ = ["compile", "compile_imported", "compile_lowered", "default_pipeline", "run_pipeline", "trace", "Imported"]
