"""A linear's bias, residual add and ReLU/clamp done in the C GEMM's registers (cpu backend, C kernels).

A CNN's 1x1 convolution is a linear over pixels whose product is read once, by a kernel that adds
the bias (``fuse`` moves a linear's bias there), maybe a residual, and clamps (ReLU, ReLU6). That
kernel writes the activation a second time: MobileNetV2's first expansion at batch 8 stores 38 MB
in the GEMM and its ReLU6 reads and writes them again (1.5 ms beside the GEMM's 3.4). When the kernel
is only that, the C GEMM (``gemm_c.gemm_source(epilogue=True)``) does it on its accumulators before
it stores them, into the kernel's output, and neither the product nor the kernel runs.

``epilogue(linear, fused)`` reads the fused op's region: from the product, through reshapes only (which
keep every element's place), an ``add`` of a per-output-channel operand (the bias: shape [N], ones
before), an ``add`` of an operand with the result's shape (the residual: same layout as the output),
then at most one ``relu`` or ``clamp`` as the last op; the region yields that value and nothing else.
Anything else (another op, a second result, a broadcast residual) leaves the two apart. The plan
(``runtime/program.py``) pairs them where the sizes are static and the rows run the GEMM, keeps x
alive until the pair is done (the GEMM writes the kernel's output while it reads x), and falls back to
the two calls when a tensor is not contiguous or the weight is not fixed for the plan.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..codegen.gemv_c import MAX_ROWS
from ..ir.core import Graph, Op, users
from ..ir.dtypes import DType
from ..ir.shapes import numel


@dataclass(frozen=True)
class Epilogue:
    """What the GEMM does to its accumulators: add operand ``bias`` of the fused op ([N], or None), add
    operand ``residual`` (the output's shape, or None), then clamp to [low, high]."""

    bias: int | None = None
    residual: int | None = None
    low: float = -math.inf
    high: float = math.inf


@dataclass(frozen=True)
class GemmEpilogue:
    """``linear`` computed with ``fused``'s region as its GEMM's epilogue."""

    linear: Op
    fused: Op
    epilogue: Epilogue
    most_rows: float = math.inf  # up to how many rows the GEMM runs the linear (past them torch's does)


def pairs(graph: Graph, rows_limit: Callable[[Op], float] = lambda op: math.inf) -> list[GemmEpilogue]:
    """The float32 linears of ``graph`` directly followed by the only op reading their product, a ``fused``
    one that is an ``Epilogue`` of it; ``rows_limit(linear)``: up to how many rows the GEMM runs it (0: never,
    no pair)."""
    readers = users(graph.ops)
    outputs = set(graph.outputs)
    found = []
    for op, after in zip(graph.ops, graph.ops[1:]):
        if op.name != "linear" or after.name != "fused" or op.result in outputs:
            continue
        if any(v.type.dtype != DType.f32 for v in (*op.operands, op.result, *after.operands, *after.results)):
            continue
        most = rows_limit(op)
        if any(reader is not after for reader in readers.get(op.result, [])) or not most > 0:
            continue
        found_epilogue = epilogue(op, after)
        if found_epilogue is not None and not (found_epilogue.bias is not None and len(op.operands) == 3):
            found.append(GemmEpilogue(op, after, found_epilogue, most))
    return found


def epilogue(linear: Op, fused: Op) -> Epilogue | None:
    """``fused``'s region as an ``Epilogue`` of ``linear``'s product, or None (see the module doc)."""
    (region,) = fused.regions
    if len(fused.results) != 1 or numel(fused.result.type.shape) != numel(linear.result.type.shape):
        return None
    n = linear.result.type.shape[-1]
    operand = dict(zip(region.args, range(len(fused.operands))))
    current = next((a for a, v in zip(region.args, fused.operands) if v is linear.result), None)
    bias = residual = None
    low, high = -math.inf, math.inf
    body = region.ops[:-1]
    for i, op in enumerate(body):
        others = [v for v in op.operands if v is not current]
        if current not in op.operands or (op.name != "add" and others):
            return None
        if op.name == "reshape":
            pass
        elif op.name == "add" and len(others) == 1 and others[0] in operand:
            other = others[0]
            if bias is None and other.type.shape[-1:] == (n,) and numel(other.type.shape) == n:
                bias = operand[other]
            elif residual is None and other.type.shape == op.result.type.shape:
                residual = operand[other]
            else:
                return None
        elif op.name in ("relu", "clamp") and i == len(body) - 1:
            low = 0.0 if op.name == "relu" else _bound(op.attrs.get("min"), -math.inf)
            high = math.inf if op.name == "relu" else _bound(op.attrs.get("max"), math.inf)
        else:
            return None
        current = op.result
    if region.results != (current,) or current is None:
        return None
    return Epilogue(bias, residual, low, high)


def _bound(value: float | None, none: float) -> float:
    return none if value is None else float(value)


def runs_the_gemm(rows: int, most: float = math.inf) -> bool:
    """Whether a float32 linear over ``rows`` rows runs the C GEMM (past the GEMV's rows, up to ``most``)."""
    return MAX_ROWS[DType.f32] < rows <= most
