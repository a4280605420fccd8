"""Print a Kernel as a Numba-CUDA ``@cuda.jit`` function (runs under the CUDA simulator too)."""
from __future__ import annotations


from ..ir.dtypes import DType
from .checked_ops import NUMBA_CUDA as CHECKED_SOURCE
from .cpu_numba import NumbaPrinter, literal
from .kernel import Call, Kernel, Reduce, Store, reduction_identity

BLOCK = 256  # threads per block of a row kernel (a power of two: the tree reduction halves it)


class CudaNumbaPrinter(NumbaPrinter):
    fast32 = False  # the GPU's own math functions are already fast
    FORMS = {**NumbaPrinter.FORMS,
             "maximum": "({0} if ({0} > {1} or {0} != {0}) else {1})",  # NaN-propagating, no NumPy on the GPU
             "minimum": "({0} if ({0} < {1} or {0} != {0}) else {1})"}

    def special(self, e: Call, a: list[str]) -> str | None:
        if e.op == "abs":
            return f"({a[0]} if {a[0]} >= {literal(0, e.dtype)} else -{a[0]})"
        return super().special(e, a)

    def stmts(self, body: tuple, depth: int, out: list[str]) -> None:
        pad = "    " * depth
        for s in body:
            if isinstance(s, Store) and self.row and depth == 2:
                out.append(f"{pad}if tid == 0:")
                out.append(f"{pad}    {s.buffer}[{self.expr(s.index)}] = {self.expr(s.value)}")
            elif isinstance(s, Reduce):
                self.reduce(s, depth, out)
            elif hasattr(s, "var") and hasattr(s, "body") and not isinstance(s, Reduce):  # Loop
                out.append(f"{pad}for {s.var} in range(tid, {self.expr(s.extent)}, nthreads):")
                self.stmts(s.body, depth + 1, out)
            else:
                super().stmts((s,), depth, out)

    def reduce(self, s: Reduce, depth: int, out: list[str]) -> None:
        pad = "    " * depth
        identity = reduction_identity(s.kind, s.dtype)
        acc_type = DType.f64 if s.dtype.is_float else DType.i64
        shared = "red_f" if s.dtype.is_float else "red_i"
        out.append(f"{pad}{s.acc} = {literal(identity, acc_type)}")
        out.append(f"{pad}for {s.var} in range(tid, {self.expr(s.extent)}, nthreads):")
        self.stmts(s.body, depth + 1, out)
        out.append(f"{pad}    {s.acc} = {self.combine(s.kind, s.acc, self.expr(s.value))}")
        out.append(f"{pad}{shared}[tid] = {s.acc}")
        out.append(f"{pad}cuda.syncthreads()")
        out.append(f"{pad}step = nthreads // 2")
        out.append(f"{pad}while step > 0:")
        out.append(f"{pad}    if tid < step:")
        out.append(f"{pad}        {shared}[tid] = {self.combine(s.kind, f'{shared}[tid]', f'{shared}[tid + step]')}")
        out.append(f"{pad}    cuda.syncthreads()")
        out.append(f"{pad}    step //= 2")
        out.append(f"{pad}{s.acc} = {literal(0, s.dtype).split('(')[0]}({shared}[0])" if s.dtype.is_float
                   else f"{pad}{s.acc} = {shared}[0]")
        out.append(f"{pad}cuda.syncthreads()")

    @staticmethod
    def combine(kind: str, a: str, b: str) -> str:
        if kind == "sum":
            return f"{a} + {b}"
        cmp = ">" if kind == "max" else "<"
        return f"({a} if ({a} {cmp} {b} or {a} != {a}) else {b})"


def cuda_numba_source(kernel: Kernel) -> str:
    """Source of a ``@cuda.jit`` function named ``kernel.name`` taking (buffers..., sizes...)."""
    printer = CudaNumbaPrinter()
    printer.row = kernel.kind == "row"
    params = [b.name for b in kernel.buffers] + list(kernel.sizes)
    lines = ["@cuda.jit", f"def {kernel.name}({', '.join(params)}):"]
    outer = printer.expr(kernel.outer)
    if printer.row:
        lines += [f"    red_f = cuda.shared.array({BLOCK}, numba.float64)",
                  f"    red_i = cuda.shared.array({BLOCK}, numba.int64)",
                  "    tid = cuda.threadIdx.x",
                  "    nthreads = cuda.blockDim.x",
                  f"    for o in range(cuda.blockIdx.x, {outer}, cuda.gridDim.x):"]
    else:
        lines += [f"    for o in range(cuda.grid(1), {outer}, cuda.gridsize(1)):"]
    printer.stmts(kernel.body, 2, lines)
    return "\n".join(lines) + "\n"


MODULE_HEADER = "import math\n\nimport numba\nimport numpy as np\nfrom numba import cuda\n" + CHECKED_SOURCE + "\n\n"
