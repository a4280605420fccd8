"""Vectorizable float32 exp, log, tanh and erf for the CPU kernels, written once for Numba and for C.

Numba calls libm's scalar ``expf``/``tanhf``/``erff`` for ``math.*``, and gcc calls them from C;
neither compiler vectorizes a loop around a call. These versions are plain arithmetic (plus
bit casts for 2^n), so both compilers vectorize the kernels that use them. The constants live in
the tables below and both printers read them: ``SOURCE`` (Numba functions ``exp32``, ``log32``,
``tanh32``, ``erf32``) and ``C_SOURCE`` (``lm_exp32``, ``lm_log32``, ...) compute the same formulas.
Accuracy: exp and log (Cephes) within 1 ulp over their whole ranges, subnormals included; tanh
and erf (Eigen's rational fits) within a few ulp. A NaN input gives NaN; log of a negative number
is NaN, of zero -inf.

exp rounds ``x / ln 2`` to an integer ``n`` in two ways. Numba: ``floor(t + 0.5)``, which LLVM
vectorizes, and which stays right when the function is inlined into a kernel compiled with
``reassoc`` (attention's). C: by adding and subtracting 1.5 * 2^23 and reading ``n`` from the sum's
bits, float arithmetic only: gcc vectorizes no loop that clamps a value and then converts it to an
integer (it splits the clamped path off), and ``floorf`` only under ``-fno-trapping-math``; C kernels
are compiled without reassociation. The two can differ only where ``t`` is within rounding of a
half-integer, and both reductions are exact there.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.dtypes import DType

FUNCTIONS = frozenset({"exp", "log", "tanh", "erf"})  # the ops these versions replace where a loop vectorizes
FLOAT32_COMPUTED = frozenset({DType.f32, DType.bf16, DType.f16})  # what computes in float32 (16-bit: widened)


@dataclass(frozen=True)
class RationalFit:
    """``p(x) / q(x)`` on ``x`` clamped to ``[-clamp, clamp]``; p odd (``x * P(x^2)``), q even."""
    clamp: float
    p: tuple[float, ...]  # coefficients of P in x^2, highest power first
    q: tuple[float, ...]  # coefficients of Q in x^2, highest power first


EXP_LOW = -104.0                 # exp(-104) rounds to 0 in float32
EXP_HIGH = 88.72283              # above: inf
LOG2E = 1.44269504088896341
LN2_HIGH, LN2_LOW = 0.693359375, -2.12194440e-4  # ln 2 split so n * LN2_HIGH is exact
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
            -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)  # Cephes logf
SQRT_HALF = 0.707106781186547524
SMALLEST_NORMAL = 1.17549435e-38
ROUND_SHIFT = 12582912.0         # 1.5 * 2^23: t + this, minus this, is t rounded to an integer
ROUND_SHIFT_BITS = 0x4B400000    # its bits; the rounded integer is the sum's bits minus these

FITS = {
    "tanh": RationalFit(7.90531110763549805,
                        p=(-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
                           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03),
                        q=(1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)),
    "erf": RationalFit(4.0,
                       p=(-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
                          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02),
                       q=(-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
                          -1.42647390514189e-02)),
}


def _horner(coefficients: tuple[float, ...], x: str, const) -> str:
    """``(((c0 * x + c1) * x + c2) ...)`` with each constant printed by ``const``."""
    text = const(coefficients[0])
    for c in coefficients[1:]:
        text = f"({text} * {x} + {const(c)})"
    return text


def _numba_source() -> str:
    f = lambda v: f"np.float32({v!r})"  # noqa: E731
    i = lambda v: f"np.int32({v})"  # noqa: E731
    rational = "".join(f'''

@numba.njit(inline="always", fastmath={{"contract"}}, error_model="numpy")
def {name}32(x):
    c = np.minimum(np.maximum(x, {f(-fit.clamp)}), {f(fit.clamp)})  # NaN flows through
    x2 = c * c
    return c * {_horner(fit.p, "x2", f)} / {_horner(fit.q, "x2", f)}
''' for name, fit in FITS.items())
    return f'''
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic


def _bitcast(result, argument):
    """An intrinsic reinterpreting an ``argument`` value's bits as a ``result``."""
    def cast(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(result))

        return result(argument), codegen

    return _intrinsic(cast)


_bits_to_f32 = _bitcast(_types.float32, _types.int32)
_f32_to_bits = _bitcast(_types.int32, _types.float32)


@numba.njit(inline="always", fastmath={{"contract"}}, error_model="numpy")
def log32(x):
    # x = m 2^e with m in [sqrt(1/2), sqrt(2)): log x = log1p(m - 1) + e log 2 (subnormals scaled by 2^23 first)
    small = x < {f(SMALLEST_NORMAL)}
    bits = _f32_to_bits(x * {f(8388608.0)} if small else x)
    e = ((bits >> {i(23)}) & {i(255)}) - ({i(149)} if small else {i(126)})
    m = _bits_to_f32((bits & {i(0x007FFFFF)}) | {i(0x3F000000)})
    low = m < {f(SQRT_HALF)}
    e = e - {i(1)} if low else e
    m = (m + m - {f(1.0)}) if low else m - {f(1.0)}
    z = m * m
    fe = np.float32(e)
    y = {_horner(LOG_POLY, "m", f)} * m * z + fe * {f(LN2_LOW)} - {f(0.5)} * z
    r = m + y + fe * {f(LN2_HIGH)}
    special = np.float32(-np.inf) if x == {f(0.0)} else x + (np.float32(np.nan) if x < {f(0.0)} else {f(0.0)})
    return r if (x > {f(0.0)}) & (x <= {f(3.4028234663852886e38)}) else special  # +inf, NaN: x; x < 0: NaN


@numba.njit(inline="always", fastmath={{"contract"}}, error_model="numpy")
def exp32(x):
    # clamps by compare-and-select (vminps/vmaxps); a NaN x stays NaN (the select keeps x)
    c = {f(EXP_LOW)} if x < {f(EXP_LOW)} else x
    c = {f(EXP_HIGH)} if c > {f(EXP_HIGH)} else c
    n = np.floor(c * {f(LOG2E)} + {f(0.5)})  # np.floor keeps float32 (math.floor gives int64)
    r = c - n * {f(LN2_HIGH)} - n * {f(LN2_LOW)}
    y = {_horner(EXP_POLY, "r", f)} * (r * r) + r + {f(1.0)}
    # 2^n as 2^h * 2^(n-h), h = n // 2: both factors are normal for n in [-150, 128], so results
    # below 2^-126 come out as the subnormals they are (one bit shift cannot make those)
    ni = np.int32(n)
    h = ni >> {i(1)}
    y = y * _bits_to_f32((h + {i(127)}) << {i(23)}) * _bits_to_f32((ni - h + {i(127)}) << {i(23)})
    # above the range -> inf, by select (no division). Row kernels keep exp out of reduction loops
    # (codegen/scratch.py), where a select would stop vectorization.
    return np.float32(np.inf) if x > {f(EXP_HIGH)} else y
''' + rational


def _c_source() -> str:
    f = lambda v: f"{v!r}f"  # noqa: E731
    rational = "".join(f'''static inline float lm_{name}32(float x) {{
  float c = x < {f(-fit.clamp)} ? {f(-fit.clamp)} : x;
  c = c > {f(fit.clamp)} ? {f(fit.clamp)} : c;
  const float x2 = c * c;
  return c * {_horner(fit.p, "x2", f)} / {_horner(fit.q, "x2", f)};
}}
''' for name, fit in FITS.items())
    return f'''static inline float lm_bits_to_f32(int32_t bits) {{ float f; memcpy(&f, &bits, 4); return f; }}
static inline int32_t lm_f32_to_bits(float f) {{ int32_t i; memcpy(&i, &f, 4); return i; }}
/* the special cases are joined by bit masks: gcc turns a select after the polynomial into a branch
   around it, and then vectorizes no loop calling this */
static inline float lm_log32(float x) {{
  const float scale = x < {f(SMALLEST_NORMAL)} ? 8388608.0f : 1.0f;
  const int32_t bits = lm_f32_to_bits(x * scale);
  const int32_t bias = x < {f(SMALLEST_NORMAL)} ? 149 : 126;
  int32_t e = ((bits >> 23) & 255) - bias;
  float m = lm_bits_to_f32((bits & 0x007FFFFF) | 0x3F000000);
  const int32_t low = m < {f(SQRT_HALF)} ? 1 : 0;
  e -= low;
  m = m + (low ? m : 0.0f) - 1.0f;
  const float z = m * m, fe = (float)e;
  const float y = {_horner(LOG_POLY, "m", f)} * m * z + fe * {f(LN2_LOW)} - 0.5f * z;
  const float r = m + y + fe * {f(LN2_HIGH)};
  const int32_t zero = -(int32_t)(x == 0.0f), negative = -(int32_t)(x < 0.0f);
  const int32_t keep = -(int32_t)((x > 0.0f) & (x <= 3.4028234663852886e38f));
  /* log 0 = -inf; x < 0: x + NaN; +inf and NaN: x + 0 */
  const int32_t special = (lm_f32_to_bits(-INFINITY) & zero) |
                          (lm_f32_to_bits(x + lm_bits_to_f32(0x7FC00000 & negative)) & ~zero);
  return lm_bits_to_f32((lm_f32_to_bits(r) & keep) | (special & ~keep));
}}
static inline float lm_exp32(float x) {{
  float c = x < {f(EXP_LOW)} ? {f(EXP_LOW)} : x;
  c = c > {f(EXP_HIGH)} ? {f(EXP_HIGH)} : c;
  const float shifted = c * {f(LOG2E)} + {f(ROUND_SHIFT)};
  const float n = shifted - {f(ROUND_SHIFT)};
  const float r = c - n * {f(LN2_HIGH)} - n * {f(LN2_LOW)};
  float y = {_horner(EXP_POLY, "r", f)} * (r * r) + r + 1.0f;
  const int32_t ni = lm_f32_to_bits(shifted) - {ROUND_SHIFT_BITS}, h = ni >> 1;
  y = y * lm_bits_to_f32((h + 127) << 23) * lm_bits_to_f32((ni - h + 127) << 23);
  return x > {f(EXP_HIGH)} ? INFINITY : y;
}}
''' + rational


SOURCE = _numba_source()
C_SOURCE = _c_source()
