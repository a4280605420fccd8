"""Scalar helpers every kernel target defines: checked indices, integer and floating division.

A checked op that fails records ``[check, value, size]`` in the kernel's error buffer (the
first failure wins on the GPU) and returns a harmless value (index 0, quotient 0), so the
kernel never touches memory out of bounds; the runtime raises the error after the launch.
The floating-point ``floor_divide`` and ``remainder`` follow ATen's formulas (through fmod),
so results near integer boundaries round as torch rounds them.
"""
from __future__ import annotations

# Numba (CPU and CUDA): the same Python under two decorators
_NUMBA = '''
@{decorator}
def lm_fail(err, check, value, size):
    if err[0] == 0:
        err[0] = check
        err[1] = value
        err[2] = size


@{decorator}
def lm_index(i, n, err, check):
    if i < 0 or i >= n:
        lm_fail(err, check, i, n)
        return 0
    return i


@{decorator}
def lm_wrap_index(i, n, err, check):
    if i < -n or i >= n:
        lm_fail(err, check, i, n)
        return 0
    return i + n if i < 0 else i


@{decorator}
def lm_int_floor_divide(a, b, err, check):
    if b == 0:
        lm_fail(err, check, a, 0)
        return a - a
    return a // b


@{decorator}
def lm_int_remainder(a, b, err, check):
    if b == 0:
        lm_fail(err, check, a, 0)
        return a - a
    return a % b


@{decorator}
def lm_int_fmod(a, b, err, check):
    if b == 0:
        lm_fail(err, check, a, 0)
        return a - a
    r = a % b
    if r != 0 and (r < 0) != (a < 0):
        r -= b
    return r


@{decorator}
def lm_fmod(a, b):
    return {fmod}(a, b)


@{decorator}
def lm_remainder(a, b):
    m = {fmod}(a, b)
    if m != 0 and (b < 0) != (m < 0):
        m += b
    return m


@{decorator}
def lm_floor_divide(a, b):
    if b == 0:
        return a / b
    m = {fmod}(a, b)
    d = (a - m) / b
    if m != 0 and (b < 0) != (m < 0):
        d -= 1
    if d == 0:
        return {copysign}(d, a / b)
    f = {floor}(d)
    if d - f > 0.5:
        f += 1
    return f
'''

NUMBA_CPU = _NUMBA.format(decorator="numba.njit(inline='always', error_model='numpy')", fmod="np.fmod",
                          copysign="np.copysign", floor="np.floor")
NUMBA_CUDA = _NUMBA.format(decorator="cuda.jit(device=True, inline=True)", fmod="math.fmod",
                           copysign="math.copysign", floor="math.floor")

CUDA_C = r"""
__device__ __forceinline__ void lm_fail(long long* err, int check, long long value, long long size) {
  if (atomicCAS(reinterpret_cast<unsigned long long*>(err), 0ULL, (unsigned long long)check) == 0ULL) {
    err[1] = value;
    err[2] = size;
  }
}
__device__ __forceinline__ long long lm_index(long long i, long long n, long long* err, int check) {
  if (i < 0 || i >= n) { lm_fail(err, check, i, n); return 0; }
  return i;
}
__device__ __forceinline__ long long lm_wrap_index(long long i, long long n, long long* err, int check) {
  if (i < -n || i >= n) { lm_fail(err, check, i, n); return 0; }
  return i < 0 ? i + n : i;
}
template <typename T> __device__ __forceinline__ T lm_int_floor_divide(T a, T b, long long* err, int check) {
  if (b == 0) { lm_fail(err, check, a, 0); return 0; }
  T q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
template <typename T> __device__ __forceinline__ T lm_int_remainder(T a, T b, long long* err, int check) {
  if (b == 0) { lm_fail(err, check, a, 0); return 0; }
  T r = a % b;
  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
template <typename T> __device__ __forceinline__ T lm_int_fmod(T a, T b, long long* err, int check) {
  if (b == 0) { lm_fail(err, check, a, 0); return 0; }
  return a % b;
}
__device__ __forceinline__ float lm_fmod(float a, float b) { return fmodf(a, b); }
__device__ __forceinline__ double lm_fmod(double a, double b) { return fmod(a, b); }
template <typename T> __device__ __forceinline__ T lm_remainder(T a, T b) {
  T m = lm_fmod(a, b);
  return (m != 0 && ((b < 0) != (m < 0))) ? m + b : m;
}
template <typename T> __device__ __forceinline__ T lm_floor_divide(T a, T b) {
  if (b == 0) return a / b;
  T m = lm_fmod(a, b);
  T d = (a - m) / b;
  if (m != 0 && ((b < 0) != (m < 0))) d -= 1;
  if (d == 0) return copysign(d, a / b);
  T f = floor(d);
  return d - f > T(0.5) ? f + 1 : f;
}
"""


def checked_call(op: str, args: list[str], wrap: bool = False) -> str:
    """The helper call for a checked scalar op (``checked_index`` or ``int_*``) on printed ``args``
    (the last is the check number); every target spells it alike."""
    if op == "checked_index":
        return f"lm_{'wrap_' if wrap else ''}index({args[0]}, {args[1]}, err, {args[2]})"
    return f"lm_{op}({args[0]}, {args[1]}, err, {args[2]})"
