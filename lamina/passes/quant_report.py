"""What the quantize pass chose, read back from a graph: one row per linear layer with a weight parameter."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Graph
from ..ir.quant_format import QuantFormat
from ..ir.types import TensorType

KERNELS = {
    "cuda": "CUDA C warp-per-channel GEMV for up to 16 rows, else dequantize + cuBLAS",
    "reference": "interpreter: dequantize then linear",
}


def kernel_description(backend: str, fmt: QuantFormat, k: int, act: str, language: str | None = None) -> str:
    """What runs a ``qlinear`` of this format on ``backend`` in kernel ``language`` (None: the backend's
    default); the cpu backend's choice depends on the CPU."""
    if backend == "cpu":
        from ..backends import kernel_language
        from ..options import CompileOptions
        from ..runtime.gemm_choice import GemmChoice
        from ..runtime.qlinear_cpu import describe

        chosen = kernel_language("cpu", CompileOptions(kernel_language=language)) or "numba"
        choice = GemmChoice.for_this_cpu()
        return describe(fmt, k, act, language=chosen, c_gemm=chosen == "c" and choice.available,
                        amx=chosen == "c" and choice.amx)
    return KERNELS.get(backend, backend) + (" (act=int8: on int8-quantized rows)" if act == "int8" else "")


@dataclass(frozen=True)
class LayerQuantization:
    """One layer: its module path, the format (None: float32), the score the bit budget used (if any), the
    bytes its weight takes (scales and zero points included) and the kernel the backend runs."""

    module: str
    weight: str
    fmt: QuantFormat | None
    score: float | None
    nbytes: int
    kernel: str

    def __str__(self) -> str:
        fmt = self.fmt.label if self.fmt else "float32"
        score = f", score {self.score:.3g}" if self.score is not None else ""
        size = f"{self.nbytes / 1e6:.2f} MB" if self.nbytes >= 1e6 else f"{self.nbytes / 1e3:.1f} KB"
        return f"{self.module or self.weight}: {fmt}{score}, {size}, {self.kernel}"


def quantization_report(graph: Graph, backend: str = "cpu", language: str | None = None) -> list[LayerQuantization]:
    """The linear layers of ``graph`` (those reading a weight parameter, quantized or not), in order, with
    the kernels of ``backend`` in ``language`` (None: its default). A quantized layer's weight is packed
    by a ``quantize`` op, or already packed (a loaded module)."""
    keys = {p.value: p.key for p in graph.params}
    for op in graph.ops:  # a transposed weight (a matmul's [in, out] parameter) is named by its parameter
        if op.name == "permute" and op.operands[0] in keys:
            keys[op.results[0]] = keys[op.operands[0]]
    packed_by = {v: op for op in graph.ops if op.name == "quantize" for v in op.results}
    rows = []
    for op in graph.ops:
        if op.name == "qlinear":
            packer = packed_by.get(op.operands[1])
            weight = keys.get(packer.operands[0], "") if packer else keys.get(op.operands[1], "").rsplit(".", 1)[0]
            score = packer.attrs.get("score") if packer else None
            fmt = QuantFormat.of(op.attrs)
            kernel = kernel_description(backend, fmt, op.operands[0].type.shape[-1], op.attrs["act"], language)
            rows.append(LayerQuantization(op.loc.module, weight, fmt, score,
                                          sum(_nbytes(v.type) for v in op.operands[1:]), kernel))
        elif op.name in ("linear", "matmul") and op.operands[1] in keys and op.operands[1].type.rank == 2:
            rows.append(LayerQuantization(op.loc.module, keys[op.operands[1]], None, None,
                                          _nbytes(op.operands[1].type), "torch.mm"))
    return rows


def _nbytes(t: TensorType) -> int:
    count = 1
    for d in t.shape:
        count *= int(d)
    return count * t.dtype.itemsize
