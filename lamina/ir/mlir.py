"""Export a Graph to MLIR with the upstream MLIR Python bindings (from ``iree-base-compiler``).

The module holds one ``func.func`` whose arguments are the graph inputs, then the
parameters (each tagged ``lamina.param = "<key>"``). Ops lower to standard
dialects: ``linalg.generic`` with ``arith``/``math`` bodies for elementwise ops,
reductions, contractions, windows and gathers; ``tensor`` for reshapes, slices
and concatenation. The module is verified by MLIR before it is returned.
Shapes must be static (symbolic dims are an MLIR ``?`` lamina does not yet lower).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .core import Graph, Op
from .dtypes import DType
from .targets import NoLowering


class MLIRExportError(NoLowering):
    """A graph lamina cannot express in MLIR yet; names the op and module path."""


def _bindings() -> Any:
    try:
        from iree.compiler import ir
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise MLIRExportError("MLIR export needs the MLIR Python bindings: pip install 'lamina[mlir]'") from e
    return ir


def to_mlir(graph: Graph, context: Any = None) -> Any:
    """The graph as a verified ``ir.Module`` (in ``context``, or a new one)."""
    ir = _bindings()
    from .mlir_lowering import Lowering

    ctx = context or ir.Context()
    with ctx, ir.Location.unknown():
        module = ir.Module.create()
        Lowering(ir, graph).emit_function(module)
        if not module.operation.verify():
            raise MLIRExportError("the exported module does not verify")
    return module


def to_mlir_text(graph: Graph) -> str:
    """MLIR text of the exported module (generic-free pretty form)."""
    return str(to_mlir(graph))


def element_type(ir: Any, dtype: DType) -> Any:
    table: dict[DType, Callable[[], Any]] = {
        DType.f64: ir.F64Type.get, DType.f32: ir.F32Type.get, DType.f16: ir.F16Type.get, DType.bf16: ir.BF16Type.get,
        DType.i64: lambda: ir.IntegerType.get_signless(64), DType.i32: lambda: ir.IntegerType.get_signless(32),
        DType.i8: lambda: ir.IntegerType.get_signless(8), DType.u8: lambda: ir.IntegerType.get_signless(8),
        DType.i4: lambda: ir.IntegerType.get_signless(4), DType.bool: lambda: ir.IntegerType.get_signless(1),
    }
    return table[dtype]()


def static_shape(op: Op | None, shape: Sequence[Any]) -> list[int]:
    if not all(isinstance(d, int) for d in shape):
        where = f" ({op.describe()})" if op is not None else ""
        raise MLIRExportError(f"MLIR export needs static shapes, got {list(map(str, shape))}{where}; "
                              "trace with concrete input shapes")
    return list(shape)
