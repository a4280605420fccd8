"""What the quantize pass chose, read back from a graph: one row per linear layer with a weight parameter."""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Graph
from ..ir.quant_format import QuantFormat
from ..ir.types import TensorType

KERNELS = {
    "cpu": "numba dequantize-in-the-loop GEMV for up to 16 rows, else blocked dequantize + torch.mm",
    "cuda": "dequantize per call + torch linear (no CUDA kernel yet)",
    "reference": "interpreter: dequantize then linear",
}


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
        return f"{self.module or self.weight}: {fmt}{score}, {self.nbytes / 1e6:.2f} MB, {self.kernel}"


def quantization_report(graph: Graph, backend: str = "cpu") -> list[LayerQuantization]:
    """The linear layers of ``graph`` (those reading a weight parameter, quantized or not), in order."""
    keys = {p.value: p.key for p in graph.params}
    rows = []
    for op in graph.ops:
        if op.name == "quantize":
            nbytes = sum(_nbytes(v.type) for v in op.results)
            rows.append(LayerQuantization(op.loc.module, keys.get(op.operands[0], ""), QuantFormat.of(op.attrs),
                                          op.attrs.get("score"), nbytes, KERNELS.get(backend, backend)))
        elif op.name == "linear" and op.operands[1] in keys:
            rows.append(LayerQuantization(op.loc.module, keys[op.operands[1]], None, None,
                                          _nbytes(op.operands[1].type), "torch.mm"))
    return rows


def _nbytes(t: TensorType) -> int:
    count = 1
    for d in t.shape:
        count *= int(d)
    return count * t.dtype.numpy.itemsize
