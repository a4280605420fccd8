"""Run a fused graph with its Numba-CUDA kernels under ``NUMBA_ENABLE_CUDASIM=1`` (no GPU needed).

Library ops (GEMMs, attention, ...) run through the reference interpreter; each ``fused``
op runs its generated ``@cuda.jit`` kernel on host arrays poisoned with NaN first. This is
how CI checks the Numba-CUDA printer numerically; it is slow, so keep shapes small.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from ..codegen.cache import KernelCache
from ..codegen.cuda_c import launch_config
from ..codegen.cuda_numba import BLOCK, MODULE_HEADER, cuda_numba_source
from ..codegen.lower import lower_kernels
from ..ir.core import Graph
from ..ir.interpreter import Interpreter, bind_symbols
from ..ir.shapes import evaluate
from .kernel_errors import check_assumptions, raise_kernel_errors
from .program import _evaluate_expr


def run_simulated(graph: Graph, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray],
                  cache: KernelCache | None = None) -> list[np.ndarray]:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        raise RuntimeError("set NUMBA_ENABLE_CUDASIM=1 before importing numba to use the simulator")
    import sympy

    cache = cache or KernelCache()
    kernels = {id(op): kernel for op, kernel in lower_kernels(graph, nested=False)}  # loose ops are interpreted
    bindings = bind_symbols([v.type for v in graph.inputs], list(inputs))
    interp = Interpreter(bindings)
    env = {id(v): np.asarray(a) for v, a in zip(graph.inputs, inputs)}
    env.update({id(p.value): np.asarray(params[p.key]) for p in graph.params})
    for op in graph.ops:
        args = [env[id(v)] for v in op.operands]
        if op.name != "fused":
            outs = interp.run_op(op, args)
        else:
            kernel = kernels[id(op)]
            fn = getattr(cache.load(f"{kernel.name}_sim", MODULE_HEADER + cuda_numba_source(kernel)), kernel.name)
            outs = [np.full(tuple(evaluate(d, bindings) for d in v.type.shape), np.nan if v.type.dtype.is_float else -7,
                            dtype=v.type.dtype.numpy) for v in op.results]
            bound = {sympy.Symbol(s, integer=True, positive=True): bindings[sympy.Symbol(s, integer=True, positive=True)]
                     for s in kernel.sizes}
            outer = _evaluate_expr(kernel.outer, bound)
            inner = _evaluate_expr(kernel.row_extent, bound) if kernel.row_extent is not None else None
            blocks, threads = launch_config(kernel, outer, inner)
            flat = [np.ascontiguousarray(a).reshape(-1) for a in args] + [o.reshape(-1) for o in outs]
            err = [np.zeros(3, dtype=np.int64)] if kernel.checks else []
            check_assumptions(kernel.assumptions, lambda d: evaluate(d, bindings))
            fn[min(blocks, 8), min(threads, BLOCK)](*flat, *err, *bound.values())
            if err:
                raise_kernel_errors([(err[0], kernel.checks)])
        for v, out in zip(op.results, outs):
            env[id(v)] = out
    return [env[id(v)] for v in graph.outputs]
