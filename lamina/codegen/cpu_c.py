"""Print a Kernel as a C function for the CPU: an OpenMP ``parallel for`` over the outer loop.

The same kernels the Numba printer (``cpu_numba.py``) prints, with the same semantics: sums of
floats accumulate in double (a vectorized sum of 16 lanes adds a few terms per lane in the float
type first, then into double lanes), max and min of floats propagate NaN, 16-bit floats are loaded from and
stored to their int16 bits and computed in float32, checked indices and integer divisions record
their failure in the error buffer ``err`` and go on with a safe value. A saved module carries its
kernels compiled this way as one shared library (``runtime/native_kernels.py``), so that loading it
needs neither Numba nor its JIT.

Buffers are plain pointers without ``restrict``: a plan may hand a kernel the same memory as input
and output (an in-place update).
"""
from __future__ import annotations

import math
from typing import Any

from ..ir.dtypes import DType
from .guarded_loads import conjuncts, guarded_read, invariant_guard_terms
from .loop_nest import nested
from .kernel import (Call, Const, Expr, Kernel, Let, Load, Loop, Reduce, Store, Var, body_exprs, inline_lets, reduction_identity,
                     walk)
from .reciprocal import SAFE_RANGE, inverse_name
from .row_blocks import BLOCK, RowPhases, row_phases
from .cpu_statements import CpuStatementPrinter
from .fastmath32 import C_SOURCE as FAST32_C
from .fastmath32 import FLOAT32_COMPUTED, FUNCTIONS
from .scalar_printer import infix_forms

# storage types; 16-bit floats travel as their bits and compute in float (COMPUTE)
STORAGE = {DType.f64: "double", DType.f32: "float", DType.bf16: "int16_t", DType.f16: "int16_t",
           DType.i64: "int64_t", DType.i32: "int32_t", DType.i8: "int8_t", DType.u8: "uint8_t", DType.i4: "int8_t",
           DType.bool: "_Bool"}
COMPUTE = {**STORAGE, DType.bf16: "float", DType.f16: "float"}
_SINGLE = FLOAT32_COMPUTED
_MATH = ("exp", "log", "sqrt", "tanh", "sin", "cos", "erf", "floor", "log1p")
_HALF = {DType.bf16: "bf16", DType.f16: "f16"}
_FAST32 = FUNCTIONS  # float32 versions in the prelude that vectorize

LANES = 16  # lane accumulators of a vectorized reduction
SUM_FLUSH = 16  # blocks of LANES terms a float sum's lanes take before they are added into double

PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* NaN-propagating max and min, +0 above -0 (IEEE 754's maximum and minimum), as selects only (no
   branches, so gcc vectorizes the loops using them): equal values meet bitwise, AND for max (+0 from
   -0 and +0), OR for min; a NaN a is kept by the last select, a NaN b by the first */
#define LM_MINMAX(T, S, I) \
  static inline T lm_max##S(T a, T b) { \
    I ia, ib; memcpy(&ia, &a, sizeof(T)); memcpy(&ib, &b, sizeof(T)); \
    const I both = ia & ib; T eq; memcpy(&eq, &both, sizeof(T)); \
    T m = a > b ? a : b; m = a == b ? eq : m; return a != a ? a : m; } \
  static inline T lm_min##S(T a, T b) { \
    I ia, ib; memcpy(&ia, &a, sizeof(T)); memcpy(&ib, &b, sizeof(T)); \
    const I either = ia | ib; T eq; memcpy(&eq, &either, sizeof(T)); \
    T m = a < b ? a : b; m = a == b ? eq : m; return a != a ? a : m; }
LM_MINMAX(float, f, int32_t)
LM_MINMAX(double, d, int64_t)
/* c ? a : b by bit masks: gcc vectorizes no loop whose select's condition is an invariant of it (a
   window's edge row), but does this one */
#define LM_SELECT(T, S, I) \
  static inline T lm_select_##S(_Bool c, T a, T b) { \
    const I m = -(I)c; I ia, ib; memcpy(&ia, &a, sizeof(T)); memcpy(&ib, &b, sizeof(T)); \
    const I r = (ia & m) | (ib & ~m); T x; memcpy(&x, &r, sizeof(T)); return x; }
LM_SELECT(float, f, int32_t)
LM_SELECT(double, d, int64_t)
/* an integer that orders as the float does, -0 below +0 (its bits, the magnitude bits flipped for
   negatives; the map is its own inverse); NaNs have no place in it, and the reductions count them apart */
static inline int32_t lm_key_f(float x) { int32_t i; memcpy(&i, &x, 4); return i ^ ((i >> 31) & 0x7FFFFFFF); }
static inline float lm_unkey_f(int32_t k) { k ^= (k >> 31) & 0x7FFFFFFF; float x; memcpy(&x, &k, 4); return x; }
static inline int64_t lm_key_d(double x) {
  int64_t i; memcpy(&i, &x, 8); return i ^ ((i >> 63) & INT64_C(0x7FFFFFFFFFFFFFFF)); }
static inline double lm_unkey_d(int64_t k) { k ^= (k >> 63) & INT64_C(0x7FFFFFFFFFFFFFFF); double x; memcpy(&x, &k, 8); return x; }
static inline float lm_max_nan_f(float a, float b) { return b != b ? b : lm_maxf(a, b); }
static inline float lm_min_nan_f(float a, float b) { return b != b ? b : lm_minf(a, b); }
static inline double lm_max_nan_d(double a, double b) { return b != b ? b : lm_maxd(a, b); }
static inline double lm_min_nan_d(double a, double b) { return b != b ? b : lm_mind(a, b); }

static inline float lm_bf16_load(int16_t bits) {
  uint32_t u = ((uint32_t)(uint16_t)bits) << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline int16_t lm_bf16_store(float x) {
  int32_t b; memcpy(&b, &x, 4);
  if (x != x) return (int16_t)((b >> 16) | 0x40);
  return (int16_t)((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
}
static inline float lm_bf16_round(float x) { return lm_bf16_load(lm_bf16_store(x)); }
static inline float lm_f16_load(int16_t bits) { _Float16 h; memcpy(&h, &bits, 2); return (float)h; }
static inline int16_t lm_f16_store(float x) { _Float16 h = (_Float16)x; int16_t b; memcpy(&b, &h, 2); return b; }
static inline float lm_f16_round(float x) { return lm_f16_load(lm_f16_store(x)); }

/* act=int8's quantization of a row (quant_format.quantize_rows): its scale max|x| / 127, and each value
   divided by the scale (by 1 in an all-zero row), rounded half to even, clamped to +-127 */
static inline float lm_int8_row_scale(const float* x, int64_t K) {
  float top = 0.0f;
  for (int64_t k = 0; k < K; k++) top = fmaxf(top, fabsf(x[k]));
  return top / 127.0f;
}
static inline float lm_int8_quantize(float x, float scale) {
  const float v = nearbyintf(x / (scale != 0.0f ? scale : 1.0f));
  return v < -127.0f ? -127.0f : v > 127.0f ? 127.0f : v;
}

static inline void lm_fail(int64_t* err, int64_t check, int64_t value, int64_t size) {
  int64_t expected = 0;
  if (__atomic_compare_exchange_n(err, &expected, check, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    err[1] = value;
    err[2] = size;
  }
}
static inline int64_t lm_index(int64_t i, int64_t n, int64_t* err, int64_t check) {
  if (i < 0 || i >= n) { lm_fail(err, check, i, n); return 0; }
  return i;
}
static inline int64_t lm_wrap_index(int64_t i, int64_t n, int64_t* err, int64_t check) {
  if (i < -n || i >= n) { lm_fail(err, check, i, n); return 0; }
  return i < 0 ? i + n : i;
}
static inline int64_t lm_int_floor_divide(int64_t a, int64_t b, int64_t* err, int64_t check) {
  if (b == 0) { lm_fail(err, check, a, 0); return 0; }
  int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
static inline int64_t lm_int_remainder(int64_t a, int64_t b, int64_t* err, int64_t check) {
  if (b == 0) { lm_fail(err, check, a, 0); return 0; }
  int64_t r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline int64_t lm_int_fmod(int64_t a, int64_t b, int64_t* err, int64_t check) {
  if (b == 0) { lm_fail(err, check, a, 0); return 0; }
  return a % b;
}
#define LM_FLOAT_HELPERS(T, S, FMOD, FLOOR) \
  static inline T lm_remainder_##S(T a, T b) { T m = FMOD(a, b); return (m != 0 && ((b < 0) != (m < 0))) ? m + b : m; } \
  static inline T lm_floor_divide_##S(T a, T b) { \
    if (b == 0) return a / b; \
    T m = FMOD(a, b); T d = (a - m) / b; \
    if (m != 0 && ((b < 0) != (m < 0))) d -= 1; \
    if (d == 0) return copysign(d, a / b); \
    T f = FLOOR(d); return d - f > (T)0.5 ? f + 1 : f; }
LM_FLOAT_HELPERS(float, f, fmodf, floorf)
LM_FLOAT_HELPERS(double, d, fmod, floor)

""" + FAST32_C + r"""
#define lm_fmod(a, b) _Generic((a), float: fmodf, default: fmod)((a), (b))
#define lm_remainder(a, b) _Generic((a), float: lm_remainder_f, default: lm_remainder_d)((a), (b))
#define lm_floor_divide(a, b) _Generic((a), float: lm_floor_divide_f, default: lm_floor_divide_d)((a), (b))
"""


def literal(value: Any, dtype: DType) -> str:
    if dtype is DType.bool:
        return "1" if value else "0"
    if dtype.is_float:
        v = float(value)
        single = dtype in _SINGLE
        if math.isnan(v):
            return "NAN" if single else "((double)NAN)"
        if math.isinf(v):
            text = "INFINITY" if single else "((double)INFINITY)"
            return text if v > 0 else f"(-{text})"
        text = repr(v)
        if "e" not in text and "." not in text:
            text += ".0"
        return f"{text}f" if single else text
    if dtype is DType.i64:
        v = int(value)
        return "INT64_MIN" if v == -(2 ** 63) else f"INT64_C({v})" if abs(v) >= 2 ** 31 else str(v)
    return f"(({STORAGE[dtype]}){int(value)})"


class CPrinter(CpuStatementPrinter):
    target = "C"
    indent = "  "
    nest_divided_loops = True  # gcc vectorizes no 64-bit division
    affine_splits = True  # ... nor masked strided reads: a stride-2 window's last column runs apart
    FORMS = {**infix_forms(floordiv="/", mod="%", logical_and="&", logical_or="|", logical_xor="!="),
             "min": "({0} < {1} ? {0} : {1})", "max": "({0} > {1} ? {0} : {1})", "neg": "(-{0})",
             "logical_not": "(!{0})", "where": "({0} ? {1} : {2})"}

    def __init__(self, half_buffers: dict[str, DType] | None = None) -> None:
        self.half_buffers = half_buffers or {}
        self.lets: dict[str, Expr] = {}  # the kernel's bindings so far (names are unique in a kernel)
        self.known: frozenset[Expr] = frozenset()  # guard terms known to hold here (a versioned loop's test)
        self.invariant: frozenset[Expr] = frozenset()  # guard terms constant in the loop printed (its else branch)
        self.inner_loops = 0  # how many loops inside the kernel's outer loop enclose what is printed now
        self.row_kernel = False  # a row kernel's outer loop runs scalar (once per row), a pointwise one vectorized

    def counted_loop(self, var: str, start: str | None, stop: str, body: tuple, depth: int, out: list[str]) -> None:
        """The loop, versioned on the guard terms of its padded reads that do not depend on it (a row
        at the window's edge): where they all hold the loop reads without masks, which gcc vectorizes
        for strided reads too (it vectorizes no masked strided load)."""
        self.inner_loops += 1
        try:
            self.versioned_counted_loop(var, start, stop, body, depth, out)
        finally:
            self.inner_loops -= 1

    def versioned_counted_loop(self, var: str, start: str | None, stop: str, body: tuple, depth: int,
                               out: list[str]) -> None:
        single = start is not None and start.isdigit() and stop.isdigit() and int(stop) - int(start) <= 1
        terms = [] if single else invariant_guard_terms(var, body, self.lets, self.known)  # nothing to vectorize in one
        if not terms:
            super().counted_loop(var, start, stop, body, depth, out)
            return
        pad = self.indent * depth
        out.append(pad + f"if ({' && '.join(self.expr(t) for t in terms)}) {{")
        outer = self.known
        self.known = outer | frozenset(terms)
        super().counted_loop(var, start, stop, body, depth + 1, out)
        self.known = outer
        out.append(pad + "} else {")
        edge = self.invariant
        self.invariant = edge | frozenset(terms)
        super().counted_loop(var, start, stop, body, depth + 1, out)
        self.invariant = edge
        out.append(pad + "}")

    def literal(self, value: Any, dtype: DType) -> str:
        return literal(value, dtype)

    def expr(self, e: Expr) -> str:
        if isinstance(e, Load) and e.buffer in self.half_buffers:
            return f"lm_{_HALF[self.half_buffers[e.buffer]]}_load({e.buffer}[{self.index(e.index)}])"
        return super().expr(e)

    def special(self, e: Call, a: list[str]) -> str | None:
        op, dt = e.op, e.dtype
        single = dt in _SINGLE
        if op == "div" and not dt.is_float:
            raise NotImplementedError("integer true division in a kernel")
        if op in _MATH:
            if single and op in _FAST32 and (self.inner_loops or not self.row_kernel):
                return f"lm_{op}32({a[0]})"  # where it vectorizes; once per row libm's is faster (less latency)
            return f"{op}{'f' if single else ''}({a[0]})"
        if op == "pow":
            return f"{'powf' if single else 'pow'}({a[0]}, {a[1]})"
        if op == "where" and self.inner_loops:  # the outer loop is not vectorized: there a select of a
            # clamped load runs without branches, which beats a load under its guard
            read = self.guarded_read(e.args[0], e.args[1])
            if read is not None:  # a padded window's read: a load under its guard (codegen/guarded_loads.py)
                guard, load = read
                if guard is None:
                    return load
                if isinstance(guard, Const):
                    return a[2]
                if dt.is_float and isinstance(e.args[1], Var) and set(conjuncts(guard)) <= self.invariant:
                    # a window's edge row reading a let, loaded already (at its clamped index, in bounds):
                    # selected by bit masks, as gcc vectorizes neither a masked load nor a select on a
                    # condition the loop does not change
                    return f"lm_select_{'f' if single else 'd'}({self.expr(guard)}, {a[1]}, {a[2]})"
                return f"({self.expr(guard)} ? {load} : {a[2]})"
        if op in ("maximum", "minimum"):
            if dt.is_float:
                return f"lm_{op[:3]}{'f' if single else 'd'}({a[0]}, {a[1]})"
            return self.FORMS[op[:3]].format(*a)
        if op == "abs":
            if dt.is_float:
                return f"{'fabsf' if single else 'fabs'}({a[0]})"
            return f"({a[0]} < 0 ? -{a[0]} : {a[0]})"
        if op == "cast":
            src = e.args[0].dtype
            if dt is DType.bool:
                return f"({a[0]} != 0)"
            if dt in _HALF:  # float32 storage, rounded to the 16-bit type's precision
                return f"lm_{_HALF[dt]}_round((float)({a[0]}))"
            if src.is_float and not dt.is_float:
                return f"(({STORAGE[dt]})({a[0]}))"  # C truncates toward zero, as math.trunc
            return f"(({COMPUTE[dt]})({a[0]}))"
        return None

    def let(self, s: Let) -> str:
        text = f"const {COMPUTE[s.value.dtype]} {s.name} = {self.expr(s.value)};"
        self.lets[s.name] = s.value
        return text

    def guarded_read(self, guard: Expr, value: Expr) -> tuple[Expr | None, str] | None:
        """For ``where(guard, value, pad)`` with ``value`` a load: the guard still needed and the load
        without the clamps of its index made redundant (``guarded_loads.guarded_read``), or None."""
        if isinstance(value, Var) and value.name in self.lets:
            value = self.lets[value.name]
        if not isinstance(value, Load):
            return None
        read = guarded_read(inline_lets(guard, self.lets), inline_lets(value.index, self.lets), self.known)
        if read is None:
            return None
        return read[0], self.expr(Load(value.dtype, value.buffer, read[1]))

    def store(self, s: Store) -> str:
        value = self.expr(s.value)
        if s.buffer in self.half_buffers:
            value = f"lm_{_HALF[self.half_buffers[s.buffer]]}_store({value})"
        return f"{s.buffer}[{self.index(s.index)}] = {value};"

    def for_range(self, var: str, start: str | None, stop: str) -> tuple[str, str | None]:
        return f"for (int64_t {var} = {start or 0}; {var} < {stop}; {var}++) {{", "}"

    def branches(self, tests: list[str]) -> tuple[str, str, str | None]:
        return f"if ({' && '.join(tests)}) {{", "} else {", "}"

    def inverse(self, d: Var) -> tuple[str, str]:
        lo, hi = SAFE_RANGE[d.dtype]
        fabs = f"{'fabsf' if d.dtype in _SINGLE else 'fabs'}({d.name})"
        return (f"const {COMPUTE[d.dtype]} {inverse_name(d)} = {literal(1.0, d.dtype)} / {d.name};",
                f"({literal(lo, d.dtype)} < {fabs} && {fabs} < {literal(hi, d.dtype)})")

    def reduce(self, s: Reduce, depth: int, out: list[str]) -> None:
        pad = "  " * depth
        wide = s.kind == "sum" and s.dtype.is_float  # sums accumulate in double: accurate at any length
        acc_type = DType.f64 if wide else s.dtype
        init = reduction_identity(s.kind, s.dtype)
        acc = f"{s.acc}_acc"
        out.append(f"{pad}{COMPUTE[acc_type]} {acc} = {literal(init, acc_type)};")
        self.inner_loops += 1
        simple = not any(isinstance(x, (Loop, Reduce)) for x in s.body)
        start = "0"
        if simple and s.kind in ("max", "min") and s.dtype.is_float:
            start = self._lane_blocked(s, depth, out)
        elif wide and simple:
            start = self._lane_blocked_sum(s, depth, out)
        out.append(f"{pad}for (int64_t {s.var} = {start}; {s.var} < {self.expr(s.extent)}; {s.var}++) {{")
        self.stmts(s.body, depth + 1, out)
        value = self.expr(s.value)
        if s.kind == "sum":
            out.append(f"{pad}  {acc} += {value};")
        elif s.dtype.is_float:  # NaN-propagating, as torch's max and min
            out.append(f"{pad}  {acc} = lm_{s.kind}_nan_{self._suffix(s)}({acc}, {value});")
        else:
            cmp = ">" if s.kind == "max" else "<"
            out.append(f"{pad}  {{ const {COMPUTE[s.dtype]} v_ = {value}; if (v_ {cmp} {acc}) {acc} = v_; }}")
        out.append(f"{pad}}}")
        self.inner_loops -= 1
        out.append(f"{pad}const {COMPUTE[s.dtype]} {s.acc} = ({COMPUTE[s.dtype]}){acc};")

    @staticmethod
    def _suffix(s: Reduce) -> str:
        return "f" if s.dtype in _SINGLE else "d"

    def _lane_blocked_sum(self, s: Reduce, depth: int, out: list[str]) -> str:
        """A float sum over whole blocks of ``LANES`` iterations, as a loop the compiler vectorizes: lane
        accumulators of the sum's own type, added into double lanes after every ``SUM_FLUSH`` blocks, so
        a float32 sum rounds only within a lane's few terms and stays accurate at any length (a double
        accumulator for every term, as the remainder loop keeps, converts each value and runs at half the
        width). Returns where the remainder loop starts."""
        pad, acc, base = "  " * depth, f"{s.acc}_acc", f"{s.acc}_base"
        lane_type, extent = COMPUTE[s.dtype], self.expr(s.extent)
        if isinstance(s.extent, Const) and int(s.extent.value) <= LANES * SUM_FLUSH:
            return self._short_lane_sum(s, depth, out)
        out.append(f"{pad}double {acc}_wide[{LANES}];")
        out.append(f"{pad}{lane_type} {acc}_lanes[{LANES}];")
        out.append(f"{pad}for (int l_ = 0; l_ < {LANES}; l_++) {acc}_wide[l_] = 0.0;")
        out.append(f"{pad}int64_t {base} = 0;")
        out.append(f"{pad}while ({base} + {LANES} <= {extent}) {{")
        out.append(f"{pad}  const int64_t {acc}_stop = {base} + {LANES * SUM_FLUSH} <= {extent} ? "
                   f"{base} + {LANES * SUM_FLUSH} : {extent};")
        out.append(f"{pad}  for (int l_ = 0; l_ < {LANES}; l_++) {acc}_lanes[l_] = 0;")
        self._lane_loop(s, depth + 1, f"{acc}_stop", [f"{acc}_lanes[l_] += {{value}};"], out)
        out.append(f"{pad}  #pragma omp simd")
        out.append(f"{pad}  for (int l_ = 0; l_ < {LANES}; l_++) {acc}_wide[l_] += {acc}_lanes[l_];")
        out.append(f"{pad}}}")
        out.append(pad + _halving(f"{acc}_wide[l_] += {acc}_wide[l_ + h_];"))
        out.append(f"{pad}{acc} += {acc}_wide[0];")
        return base

    def _lane_loop(self, s: Reduce, depth: int, stop: str, update: list[str], out: list[str]) -> None:
        """Whole blocks of ``LANES`` iterations of ``s`` up to ``stop``, from ``{s.acc}_base`` on, as an inner
        loop over the lanes the compiler vectorizes: the body, then the ``update`` lines, where
        ``{value}`` is the reduced value."""
        pad, base = "  " * depth, f"{s.acc}_base"
        out.append(f"{pad}for (; {base} + {LANES} <= {stop}; {base} += {LANES}) {{")
        out.append(f"{pad}  #pragma omp simd")
        out.append(f"{pad}  for (int l_ = 0; l_ < {LANES}; l_++) {{")
        out.append(f"{pad}    const int64_t {s.var} = {base} + l_;")
        self.stmts(s.body, depth + 2, out)
        value = self.expr(s.value)
        out.extend(f"{pad}    {line.replace('{value}', value)}" for line in update)
        out.append(f"{pad}  }}")
        out.append(f"{pad}}}")

    def _short_lane_sum(self, s: Reduce, depth: int, out: list[str]) -> str:
        """``_lane_blocked_sum`` for a sum of at most one flush of terms (a softmax over rows of 64): the
        lanes are joined in their own type and added to the double accumulator once, without the double
        lanes, whose conversions and join cost a short row about 7% of its time."""
        pad, acc, base = "  " * depth, f"{s.acc}_acc", f"{s.acc}_base"
        out.append(f"{pad}{COMPUTE[s.dtype]} {acc}_lanes[{LANES}];")
        out.append(f"{pad}for (int l_ = 0; l_ < {LANES}; l_++) {acc}_lanes[l_] = 0;")
        out.append(f"{pad}int64_t {base} = 0;")
        self._lane_loop(s, depth, self.expr(s.extent), [f"{acc}_lanes[l_] += {{value}};"], out)
        out.append(pad + _halving(f"{acc}_lanes[l_] += {acc}_lanes[l_ + h_];"))
        out.append(f"{pad}{acc} += {acc}_lanes[0];")
        return base

    def _lane_blocked(self, s: Reduce, depth: int, out: list[str]) -> str:
        """A float max or min over whole blocks of ``LANES`` iterations, as a loop the compiler vectorizes
        (a running NaN-propagating max is a chain of selects it leaves scalar, and even vectorized it is
        a dozen dependent instructions): each lane keeps the max (min) of the values' order keys
        (``lm_key_f``: one integer max, -0 below +0 as ``lm_maxf`` orders them) and whether it saw a NaN. The
        result is exactly the running max's, except where a NaN was seen: then the exact loop runs the
        whole reduction again. Returns where that loop starts."""
        pad, acc, base, s_ = "  " * depth, f"{s.acc}_acc", f"{s.acc}_base", self._suffix(s)
        itype = "int32_t" if s_ == "f" else "int64_t"
        keys, nans, better = f"{acc}_keys", f"{acc}_nans", ">" if s.kind == "max" else "<"
        out.append(f"{pad}{itype} {keys}[{LANES}];")
        out.append(f"{pad}int32_t {nans}[{LANES}];")
        out.append(f"{pad}for (int l_ = 0; l_ < {LANES}; l_++) {{ {keys}[l_] = lm_key_{s_}({acc}); {nans}[l_] = 0; }}")
        out.append(f"{pad}int64_t {base} = 0;")
        update = [f"const {COMPUTE[s.dtype]} v_ = {{value}};", f"const {itype} k_ = lm_key_{s_}(v_);",
                  f"{keys}[l_] = k_ {better} {keys}[l_] ? k_ : {keys}[l_];", f"{nans}[l_] |= v_ != v_;"]
        self._lane_loop(s, depth, self.expr(s.extent), update, out)
        join = (f"{keys}[l_] = {keys}[l_ + h_] {better} {keys}[l_] ? {keys}[l_ + h_] : {keys}[l_]; "
                f"{nans}[l_] |= {nans}[l_ + h_];")
        out.append(pad + _halving(join))
        out.append(f"{pad}if ({nans}[0]) {base} = 0;  /* the exact loop again, from the start */")
        out.append(f"{pad}else {acc} = lm_unkey_{s_}({keys}[0]);")
        return base


def _halving(step: str) -> str:
    """A loop joining ``LANES`` lanes into lane 0 by halves (lane ``l_`` with lane ``l_ + h_``): a tree of
    independent operations the compiler vectorizes, where a running join is a chain of them. Unrolled,
    so that the lanes stay in registers: left as a loop, the join of a 64-wide row's log_softmax cost
    13% of the kernel (16384 x 64 on the Xeon: 430 -> 373 us)."""
    return (f"_Pragma(\"GCC unroll {LANES.bit_length()}\") for (int h_ = {LANES // 2}; h_ > 0; h_ /= 2) "
            f"_Pragma(\"omp simd\") for (int l_ = 0; l_ < h_; l_++) {{ {step} }}")


def param_ctype(name: str, kernel: Kernel) -> str:
    """The C type of lifted constant ``name`` (``codegen/shared_kernels.py``: ``c*`` integers, ``f*``
    floats of the dtype they replace)."""
    return "int64_t" if name.startswith("c") else "double" if _param_dtype(name, kernel) is DType.f64 else "float"


def _param_dtype(name: str, kernel: Kernel) -> DType:
    for e in body_exprs(kernel.body):
        for sub in walk(e):
            if isinstance(sub, Var) and sub.name == name:
                return sub.dtype
    return DType.f64


def _row_blocks(printer: CPrinter, phases: RowPhases, rows: str, omp: str | None, lines: list[str]) -> None:
    """The outer loop over blocks of ``BLOCK`` rows, each in three passes (``codegen/row_blocks.py``):
    every row's ``before``, the block's row math as one vectorized loop, every row's ``after``; the
    values crossing passes kept in per-block arrays named ``<value>_blk``."""
    if omp:
        lines.append(omp)
    lines.append(f"  for (int64_t ob_ = 0; ob_ < {rows}; ob_ += {BLOCK}) {{")
    lines.append(f"    const int64_t oe_ = ob_ + {BLOCK} < {rows} ? ob_ + {BLOCK} : {rows};")
    lines += [f"    {COMPUTE[t]} {n}_blk[{BLOCK}];" for n, t in phases.carried.items()]
    math_names = {s.name for s in phases.math}
    early = [n for n in phases.carried if n not in math_names]
    lines.append("    for (int64_t o = ob_; o < oe_; o++) {")
    printer.stmts(phases.before, 3, lines)
    lines += [f"      {n}_blk[o - ob_] = {n};" for n in early]
    lines.append("    }")
    lines.append("    #pragma omp simd")
    lines.append("    for (int64_t i_ = 0; i_ < oe_ - ob_; i_++) {")
    lines += [f"      const {COMPUTE[t]} {n} = {n}_blk[i_];" for n, t in phases.carried.items() if n in phases.into_math]
    printer.inner_loops += 1  # the math is the loop's body here: the vectorizing forms
    printer.stmts(phases.math, 3, lines)
    printer.inner_loops -= 1
    lines += [f"      {n}_blk[i_] = {n};" for n in phases.carried if n in math_names]
    lines.append("    }")
    lines.append("    for (int64_t o = ob_; o < oe_; o++) {")
    lines += [f"      const {COMPUTE[t]} {n} = {n}_blk[o - ob_];" for n, t in phases.carried.items()
              if n in phases.into_after]
    printer.stmts(phases.after, 3, lines)
    lines.append("    }")
    lines.append("  }")


def c_source(kernel: Kernel, name: str, parallel: bool) -> str:
    """C of ``kernel`` as ``void name(buffers..., sizes..., params...)``; the outer loop an OpenMP
    ``parallel for`` when ``parallel``. A kernel with scratch rows runs its outer loop in chunks, each
    allocating its scratch once (as the Numba printer does)."""
    printer = CPrinter({b.name: b.dtype for b in kernel.buffers if b.dtype in _HALF})
    printer.row_kernel = kernel.kind == "row"
    params = [f"{'' if b.output or b.name == 'err' else 'const '}{STORAGE[b.dtype]}* {b.name}" for b in kernel.buffers]
    params += [f"int64_t {s}" for s in kernel.sizes] + [f"{param_ctype(p, kernel)} {p}" for p in kernel.params]
    lines = [f"void {name}({', '.join(params)}) {{"]
    outer = printer.expr(kernel.outer)
    omp = "  #pragma omp parallel for schedule(static)" if parallel else None
    if kernel.scratch:
        lines.append(f"  const int64_t n_outer = {outer};")
        lines.append(f"  const int64_t chunks = n_outer < {64 if parallel else 1} ? n_outer : {64 if parallel else 1};")
        if omp:
            lines.append(omp)
        lines.append("  for (int64_t chunk = 0; chunk < chunks; chunk++) {")
        for b in kernel.scratch:
            ctype = COMPUTE[b.dtype]  # a scratch row of 16-bit floats keeps float32 (it is never stored narrowed)
            lines.append(f"    {ctype}* {b.name} = ({ctype}*)malloc(sizeof({ctype}) * (size_t)({printer.expr(b.size)}));")
        lines.append("    for (int64_t o = chunk * n_outer / chunks; o < (chunk + 1) * n_outer / chunks; o++) {")
        printer.stmts(kernel.body, 3, lines)
        lines.append("    }")
        lines += [f"    free({b.name});" for b in kernel.scratch]
        lines.append("  }")
    else:
        rows = nested(Loop("o", kernel.outer, kernel.body))  # o // w and o % w: rows of w, an inner loop
        phases = row_phases(kernel.body, "o", kernel.outer) if rows is None and printer.row_kernel else None
        if phases is not None:
            _row_blocks(printer, phases, outer, omp, lines)
            lines.append("}")
            return "\n".join(lines) + "\n"
        var, body = ("o", kernel.body) if rows is None else (rows.var, rows.body)
        if rows is not None:
            outer = printer.expr(rows.extent)
        if omp:
            lines.append(omp)
        lines.append(f"  for (int64_t {var} = 0; {var} < {outer}; {var}++) {{")
        printer.stmts(body, 2, lines)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"

