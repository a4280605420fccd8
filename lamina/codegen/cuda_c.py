"""Print a Kernel as CUDA C for ``cupy.RawKernel``.

Pointwise kernels: a grid-stride loop over the flat index, four elements per thread
through ``float4`` loads/stores when every access is the flat index and sizes allow it.
Row kernels: one block per row (grid-stride over rows); each reduction is a block-strided
loop, then a warp-shuffle + shared-memory block reduction; the element loop is
block-strided; row-level stores are done by thread 0.
"""
from __future__ import annotations

import math
from typing import Any

from ..ir.dtypes import DType
from .checked_ops import CUDA_C as CHECKED_SOURCE
from .kernel import Call, Const, Expr, Kernel, Let, Load, Loop, Reduce, Store, Var, reduction_identity, walk
from .scalar_printer import ScalarPrinter, infix_forms

CTYPE = {DType.f64: "double", DType.f32: "float", DType.i64: "long long", DType.i32: "int", DType.i8: "signed char",
         DType.u8: "unsigned char", DType.i4: "signed char", DType.bool: "bool"}
_F32_MATH = {"exp": "expf", "log": "logf", "sqrt": "sqrtf", "tanh": "tanhf", "sin": "sinf", "cos": "cosf",
             "erf": "erff", "floor": "floorf", "log1p": "log1pf"}

PRELUDE = r"""
template <typename T> __device__ __forceinline__ T lm_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T> __device__ __forceinline__ T lm_min(T a, T b) { return (a < b || a != a) ? a : b; }
struct lm_sum_op { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct lm_max_op { template <typename T> __device__ T operator()(T a, T b) const { return lm_max(a, b); } };
struct lm_min_op { template <typename T> __device__ T operator()(T a, T b) const { return lm_min(a, b); } };
template <typename T, typename Op> __device__ T lm_block_reduce(T v, T* shared, T identity, Op op) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, off));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < warps ? shared[threadIdx.x] : identity;
  if (warp == 0) for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, off));
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  v = shared[0];
  __syncthreads();
  return v;
}
""" + CHECKED_SOURCE


def literal(value: Any, dtype: DType) -> str:
    if dtype is DType.bool:
        return "true" if value else "false"
    if dtype.is_float:
        v = float(value)
        single = dtype is not DType.f64
        if math.isnan(v):
            return "__int_as_float(0x7fc00000)" if single else "__longlong_as_double(0x7ff8000000000000LL)"
        if math.isinf(v):
            bits = "__int_as_float(0x7f800000)" if single else "__longlong_as_double(0x7ff0000000000000LL)"
            return bits if v > 0 else f"(-{bits})"
        text = repr(v)
        if "e" not in text and "." not in text:
            text += ".0"
        return text + ("f" if single else "")
    if dtype is DType.i64:
        return f"{int(value)}LL"
    return f"(({CTYPE[dtype]}){int(value)})"


class CudaCPrinter(ScalarPrinter):
    target = "CUDA C"
    FORMS = {**infix_forms(floordiv="/", mod="%", logical_and="&&", logical_or="||", logical_xor="!="),
             "min": "({0} < {1} ? {0} : {1})", "max": "({0} > {1} ? {0} : {1})", "maximum": "lm_max({0}, {1})",
             "minimum": "lm_min({0}, {1})", "neg": "(-{0})", "logical_not": "(!{0})", "where": "({0} ? {1} : {2})"}

    def literal(self, value: Any, dtype: DType) -> str:
        return literal(value, dtype)

    def fn(self, name: str, dt: DType) -> str:
        if dt is DType.f64:
            return name
        return _F32_MATH[name]

    def special(self, e: Call, a: list[str]) -> str | None:
        op, dt = e.op, e.dtype
        if op in _F32_MATH:
            return f"{self.fn(op, dt)}({a[0]})"
        if op == "pow":
            return f"{'powf' if dt is DType.f32 else 'pow'}({a[0]}, {a[1]})"
        if op == "abs":
            return f"({a[0]} < {literal(0, dt)} ? -{a[0]} : {a[0]})"
        if op == "cast":
            return f"({a[0]} != 0)" if dt is DType.bool else f"(({CTYPE[dt]})({a[0]}))"
        return None

    def stmts(self, body: tuple, depth: int, out: list[str], row_kernel: bool) -> None:
        pad = "  " * depth
        for s in body:
            if isinstance(s, Let):
                out.append(f"{pad}const {CTYPE[s.value.dtype]} {s.name} = {self.expr(s.value)};")
            elif isinstance(s, Store):
                guard = "if (threadIdx.x == 0) " if row_kernel and depth == 2 else ""
                out.append(f"{pad}{guard}{s.buffer}[{self.expr(s.index)}] = {self.expr(s.value)};")
            elif isinstance(s, Loop):
                out.append(f"{pad}for (long long {s.var} = threadIdx.x; {s.var} < {self.expr(s.extent)}; "
                           f"{s.var} += blockDim.x) {{")
                self.stmts(s.body, depth + 1, out, row_kernel)
                out.append(f"{pad}}}")
            elif isinstance(s, Reduce):
                self.reduce(s, depth, out, row_kernel)

    def reduce(self, s: Reduce, depth: int, out: list[str], row_kernel: bool) -> None:
        pad = "  " * depth
        acc_type = DType.f64 if s.dtype.is_float else DType.i64
        identity = reduction_identity(s.kind, s.dtype)
        ident = literal(identity, acc_type)
        op = {"sum": "lm_sum_op()", "max": "lm_max_op()", "min": "lm_min_op()"}[s.kind]
        shared = "lm_red_d" if acc_type is DType.f64 else "lm_red_i"
        out.append(f"{pad}{CTYPE[acc_type]} {s.acc}_part = {ident};")
        out.append(f"{pad}for (long long {s.var} = threadIdx.x; {s.var} < {self.expr(s.extent)}; {s.var} += blockDim.x) {{")
        self.stmts(s.body, depth + 1, out, row_kernel)
        out.append(f"{pad}  {s.acc}_part = {op}({s.acc}_part, ({CTYPE[acc_type]})({self.expr(s.value)}));")
        out.append(f"{pad}}}")
        out.append(f"{pad}const {CTYPE[s.dtype]} {s.acc} = ({CTYPE[s.dtype]})lm_block_reduce({s.acc}_part, {shared}, "
                   f"{ident}, {op});")


class _LanePrinter(CudaCPrinter):
    """Prints loads (all at the flat index, see ``vectorizable``) as one lane of a float4 register."""

    def __init__(self, lane: str) -> None:
        self.lane = lane

    def expr(self, e: Expr) -> str:
        return f"{e.buffer}_v.{self.lane}" if isinstance(e, Load) else super().expr(e)


def vectorizable(kernel: Kernel) -> bool:
    """float4 path: f32 pointwise kernel whose every load/store index is the flat index ``o``."""
    if kernel.kind != "pointwise" or not isinstance(kernel.outer, Const) or kernel.outer.value % 4:
        return False
    for s in kernel.body:
        exprs = [s.value] if isinstance(s, Let) else [s.index, s.value] if isinstance(s, Store) else None
        if exprs is None:
            return False
        if isinstance(s, Store) and not (isinstance(s.index, Var) and s.index.name == "o"):
            return False
        for e in exprs:
            for sub in walk(e):
                if isinstance(sub, Load) and not (isinstance(sub.index, Var) and sub.index.name == "o"):
                    return False
    return all(b.dtype is DType.f32 for b in kernel.buffers)


def cuda_source(kernel: Kernel, prelude: bool = True) -> str:
    """CUDA C of ``kernel`` (``extern "C"``, named ``kernel.name``), with the helper prelude unless told not."""
    printer = CudaCPrinter()
    params = [f"{'const ' if not b.output else ''}{CTYPE[b.dtype]}* __restrict__ {b.name}" for b in kernel.buffers]
    params += [f"long long {s}" for s in kernel.sizes]
    lines = ([PRELUDE] if prelude else []) + [f'extern "C" __global__ void {kernel.name}({", ".join(params)}) {{']
    outer = printer.expr(kernel.outer)
    if kernel.kind == "row":
        lines.append("  __shared__ double lm_red_d[32];")
        lines.append("  __shared__ long long lm_red_i[32];")
        lines.append(f"  for (long long o = blockIdx.x; o < {outer}; o += gridDim.x) {{")
        printer.stmts(kernel.body, 2, lines, row_kernel=True)
        lines.append("  }")
    elif vectorizable(kernel):
        lines.append(f"  for (long long q = blockIdx.x * (long long)blockDim.x + threadIdx.x; q < {outer} / 4; "
                     "q += (long long)blockDim.x * gridDim.x) {")
        for b in kernel.inputs:
            lines.append(f"    const float4 {b.name}_v = reinterpret_cast<const float4*>({b.name})[q];")
        for b in kernel.outputs:
            lines.append(f"    float4 {b.name}_v;")
        for i, lane in enumerate("xyzw"):
            lane_printer = _LanePrinter(lane)
            lines.append("    {")
            lines.append(f"      const long long o = 4 * q + {i};")
            for s in kernel.body:
                text = lane_printer.expr(s.value)
                if isinstance(s, Let):
                    lines.append(f"      const {CTYPE[s.value.dtype]} {s.name} = {text};")
                else:
                    lines.append(f"      {s.buffer}_v.{lane} = {text};")
            lines.append("    }")
        for b in kernel.outputs:
            lines.append(f"    reinterpret_cast<float4*>({b.name})[q] = {b.name}_v;")
        lines.append("  }")
    else:
        lines.append(f"  for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < {outer}; "
                     "o += (long long)blockDim.x * gridDim.x) {")
        printer.stmts(kernel.body, 2, lines, row_kernel=False)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def launch_config(kernel: Kernel, outer: int, inner: int | None) -> tuple[int, int]:
    """(blocks, threads): row kernels one block per row, threads a power of two up to 1024."""
    return launch_dims(kernel.kind == "row", vectorizable(kernel), outer, inner)


def launch_dims(row: bool, vectorized: bool, outer: int, inner: int | None) -> tuple[int, int]:
    """``launch_config`` from the kernel's kind and the sizes alone (a wrapper calls it per call when
    the sizes are known only then)."""
    if row:
        threads = 32
        while threads < min(inner or 1, 1024):
            threads *= 2
        return max(1, min(outer, 65535 * 16)), threads
    work = outer // 4 if vectorized else outer
    return max(1, min((work + 255) // 256, 65535 * 16)), 256
