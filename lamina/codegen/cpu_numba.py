"""Print a Kernel as a Numba ``@njit(parallel=True, cache=True)`` function (prange over the outer loop)."""
from __future__ import annotations

import math
from typing import Any

from ..ir.dtypes import DType
from .checked_ops import NUMBA_CPU as CHECKED_SOURCE
from .fastmath32 import FLOAT32_COMPUTED, FUNCTIONS
from .fastmath32 import SOURCE as FAST32_SOURCE
from .float_minmax import SOURCE as MINMAX_SOURCE
from .half_floats import SOURCE as HALF_SOURCE
from .kernel import Call, Const, Expr, Kernel, Let, Load, Reduce, Store, Var, reduction_identity
from .reciprocal import SAFE_RANGE, inverse_name
from .cpu_statements import CpuStatementPrinter
from .scalar_printer import infix_forms
from .wide_vectors import SOURCE as WIDE_VECTORS_SOURCE

# 16-bit floats compute in float32 (their buffers are int16 bits: codegen/half_floats.py)
_NP = {DType.f64: "np.float64", DType.f32: "np.float32", DType.f16: "np.float32", DType.bf16: "np.float32",
       DType.i64: "np.int64", DType.i32: "np.int32", DType.i8: "np.int8", DType.u8: "np.uint8", DType.i4: "np.int8",
       DType.bool: "np.bool_"}
_MATH = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "tanh": "math.tanh", "sin": "math.sin",
         "cos": "math.cos", "erf": "math.erf", "floor": "np.floor", "log1p": "math.log1p"}  # np.floor keeps the float type

_FLOAT_MINMAX = {DType.f32: {"max": "fmaximum32", "min": "fminimum32"},
                 DType.bf16: {"max": "fmaximum32", "min": "fminimum32"},
                 DType.f16: {"max": "fmaximum32", "min": "fminimum32"},
                 DType.f64: {"max": "fmaximum64", "min": "fminimum64"}}  # codegen/float_minmax.py
_HALF = {DType.bf16: "bf16", DType.f16: "f16"}  # 16-bit floats: {prefix}_load / _store / _round
_SINGLE = FLOAT32_COMPUTED
_FAST32 = FUNCTIONS  # float32 versions in fastmath32 that vectorize

# Numba's parallel passes beyond prange (array expressions, comprehensions, ...) find nothing in
# generated kernels but cost ~0.17 s of compile time per kernel.
PRANGE_ONLY = "{'prange': True}"

# Kernels with less work than this run serially: starting threads costs more than it saves.
PARALLEL_THRESHOLD = 1 << 15


def literal(value: Any, dtype: DType) -> str:
    if dtype is DType.bool:
        return "True" if value else "False"
    if dtype.is_float:
        v = float(value)
        text = "np.inf" if v == math.inf else "-np.inf" if v == -math.inf else "np.nan" if math.isnan(v) else repr(v)
        return f"{_NP[dtype]}({text})"
    return str(int(value)) if dtype is DType.i64 else f"{_NP[dtype]}({int(value)})"


class NumbaPrinter(CpuStatementPrinter):
    target = "Numba"
    fast32 = True  # float32 exp/tanh/erf through fastmath32 (vectorizable on the CPU)
    FORMS = {**infix_forms(pow="**", floordiv="//", mod="%", logical_and="&", logical_or="|", logical_xor="^"),
             "min": "min({0}, {1})", "max": "max({0}, {1})", "maximum": "np.maximum({0}, {1})",
             "minimum": "np.minimum({0}, {1})", "neg": "(-{0})", "abs": "abs({0})", "logical_not": "(not {0})",
             "where": "({1} if {0} else {2})"}

    def __init__(self, half_buffers: dict[str, DType] | None = None) -> None:
        self.half_buffers = half_buffers or {}  # the kernel's 16-bit float buffers (int16 bits)

    def literal(self, value: Any, dtype: DType) -> str:
        return literal(value, dtype)

    def expr(self, e: Expr) -> str:
        if isinstance(e, Load) and e.buffer in self.half_buffers:
            return f"{_HALF[self.half_buffers[e.buffer]]}_load({e.buffer}[{self.index(e.index)}])"
        return super().expr(e)

    def index(self, e: Expr) -> str:
        """Indices are never negative; as uint64 Numba drops its wrap-around check, which lets loops vectorize."""
        text = self.expr(e)
        return text if isinstance(e, Const) else f"np.uint64({text})"

    def special(self, e: Call, a: list[str]) -> str | None:
        op, dt = e.op, e.dtype
        if op == "div" and not dt.is_float:
            raise NotImplementedError("integer true division in a kernel")
        if op in _MATH:
            if self.fast32 and dt in _SINGLE and op in _FAST32:
                return f"{op}32({a[0]})"
            return f"{_MATH[op]}({a[0]})"
        if op == "cast":
            src = e.args[0].dtype
            if dt is DType.bool:
                return f"({a[0]} != 0)"
            if src.is_float and not dt.is_float:
                return f"{_NP[dt]}(math.trunc({a[0]}))" if dt is not DType.i64 else f"np.int64({a[0]})"
            if dt in _HALF:  # the value keeps float32 storage, rounded to the 16-bit type's precision
                return f"{_HALF[dt]}_round(np.float32({a[0]}))"
            return f"{_NP[dt]}({a[0]})"
        return None

    def let(self, s: Let) -> str:
        return f"{s.name} = {self.expr(s.value)}"

    def store(self, s: Store) -> str:
        value = self.expr(s.value)
        if s.buffer in self.half_buffers:
            value = f"{_HALF[self.half_buffers[s.buffer]]}_store({value})"
        return f"{s.buffer}[{self.index(s.index)}] = {value}"

    def for_range(self, var: str, start: str | None, stop: str) -> tuple[str, str | None]:
        return f"for {var} in range({stop if start is None else f'{start}, {stop}'}):", None

    def branches(self, tests: list[str]) -> tuple[str, str, str | None]:
        return f"if {' and '.join(tests)}:", "else:", None

    def inverse(self, d: Var) -> tuple[str, str]:
        lo, hi = SAFE_RANGE[d.dtype]
        return (f"{inverse_name(d)} = {literal(1.0, d.dtype)} / {d.name}",
                f"{literal(lo, d.dtype)} < abs({d.name}) < {literal(hi, d.dtype)}")

    def reduce(self, s: Reduce, depth: int, out: list[str]) -> None:
        pad = "    " * depth
        wide = s.kind == "sum" and s.dtype.is_float  # sums accumulate in f64: accurate at any length
        acc_type = DType.f64 if wide else s.dtype
        init = reduction_identity(s.kind, s.dtype)
        out.append(f"{pad}{s.acc} = {literal(init, acc_type)}")
        out.append(f"{pad}for {s.var} in range({self.expr(s.extent)}):")
        self.stmts(s.body, depth + 1, out)
        value = self.expr(s.value)
        if s.kind == "sum":
            out.append(f"{pad}    {s.acc} += {value}")
        elif s.dtype in _FLOAT_MINMAX:  # llvm.maximum/minimum: NaN-propagating, and it vectorizes
            out.append(f"{pad}    {s.acc} = {_FLOAT_MINMAX[s.dtype][s.kind]}({s.acc}, {value})")
        else:
            cmp = ">" if s.kind == "max" else "<"
            out.append(f"{pad}    {s.acc}_v = {value}")
            out.append(f"{pad}    {s.acc} = {s.acc}_v if {s.acc}_v {cmp} {s.acc} else {s.acc}")
        if wide:
            out.append(f"{pad}{s.acc} = {_NP[s.dtype]}({s.acc})")


def numba_source(kernel: Kernel, parallel: bool) -> str:
    """Source of a module defining ``kernel.name`` as a Numba function of (buffers..., sizes..., params...).

    A kernel with scratch rows runs its outer loop in per-thread chunks, each allocating its
    scratch once.
    """
    printer = NumbaPrinter({b.name: b.dtype for b in kernel.buffers if b.dtype in _HALF})
    params = [b.name for b in kernel.buffers] + list(kernel.sizes) + list(kernel.params)
    outer = printer.expr(kernel.outer)
    lines = [
        f"@numba.njit(parallel={PRANGE_ONLY if parallel else False}, cache=True, nogil=True, error_model='numpy', "
        "boundscheck=False, "
        "fastmath={'reassoc', 'contract'})",
        f"def {kernel.name}({', '.join(params)}):",
    ]
    if kernel.scratch:
        # enough per-thread chunks to balance (a constant keeps the cache usable); serially, one: a
        # scratch row is allocated once per chunk
        chunks = "min(n_outer, 64)" if parallel else "min(n_outer, 1)"
        lines += [f"    n_outer = {outer}",
                  f"    chunks = {chunks}",
                  "    for chunk in numba.prange(chunks):"]
        lines += [f"        {b.name} = np.empty({printer.expr(b.size)}, {_NP[b.dtype]})" for b in kernel.scratch]
        lines.append("        prefer_wide_vectors()")
        lines.append("        for o in range(chunk * n_outer // chunks, (chunk + 1) * n_outer // chunks):")
        printer.stmts(kernel.body, 3, lines)
    else:
        lines.append(f"    for o in numba.prange({outer}):")
        lines.append("        prefer_wide_vectors()")
        printer.stmts(kernel.body, 2, lines)
    return "\n".join(lines) + "\n"


MODULE_HEADER = ("import math\n\nimport numba\nimport numpy as np\n" + FAST32_SOURCE + MINMAX_SOURCE + HALF_SOURCE
                 + WIDE_VECTORS_SOURCE + CHECKED_SOURCE + "\n\n")
