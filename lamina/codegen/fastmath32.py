"""Vectorizable float32 exp, tanh and erf for the Numba CPU target.

Numba calls libm's scalar ``expf``/``tanhf``/``erff`` for ``math.*``; without Intel's SVML
LLVM cannot vectorize loops that contain them. These versions are plain arithmetic (plus
one integer-to-float bit cast for 2^n), so LLVM vectorizes the kernels that use them.
Accuracy: exp (Cephes) within 1 ulp over its whole range, subnormal results included; tanh and
erf (Eigen's rational fits) within a few ulp.
"""

SOURCE = r'''
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic


@_intrinsic
def _bits_to_f32(typingctx, bits):
    sig = _types.float32(_types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(_types.float32))

    return sig, codegen


@numba.njit(inline="always", fastmath={"contract"}, error_model="numpy")
def exp32(x):
    # clamps by compare-and-select, each one vminps/vmaxps, and a NaN x stays NaN (the select keeps x)
    c = np.float32(-104.0) if x < np.float32(-104.0) else x  # exp(-104) rounds to 0 in float32
    c = np.float32(88.72283) if c > np.float32(88.72283) else c
    n = np.floor(c * np.float32(1.44269504088896341) + np.float32(0.5))  # np.floor keeps float32 (math.floor gives int64)
    r = c - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    z = r * r
    p = ((((np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r + np.float32(8.3334519073e-3)) * r
          + np.float32(4.1665795894e-2)) * r + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1)
    y = p * z + r + np.float32(1.0)
    # 2^n as 2^h * 2^(n-h), h = n // 2: both factors are normal for n in [-150, 128], so results
    # below 2^-126 come out as the subnormals they are (one bit shift cannot make those)
    ni = np.int32(n)
    h = ni >> np.int32(1)
    y = y * _bits_to_f32((h + np.int32(127)) << np.int32(23)) * _bits_to_f32((ni - h + np.int32(127)) << np.int32(23))
    # above the range -> inf, by select (no division). Row kernels keep exp out of reduction loops
    # (codegen/scratch.py), where a select would stop vectorization.
    return np.float32(np.inf) if x > np.float32(88.72283) else y


@numba.njit(inline="always", fastmath={"contract"}, error_model="numpy")
def tanh32(x):
    c = np.minimum(np.maximum(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
    x2 = c * c
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    p = p * c
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return p / q  # NaN flows through the clamps


@numba.njit(inline="always", fastmath={"contract"}, error_model="numpy")
def erf32(x):
    c = np.minimum(np.maximum(x, np.float32(-4.0)), np.float32(4.0))
    x2 = c * c
    p = np.float32(-2.72614225801306e-10)
    p = p * x2 + np.float32(2.77068142495902e-08)
    p = p * x2 + np.float32(-2.10102402082508e-06)
    p = p * x2 + np.float32(-5.69250639462346e-05)
    p = p * x2 + np.float32(-7.34990630326855e-04)
    p = p * x2 + np.float32(-2.95459980854025e-03)
    p = p * x2 + np.float32(-1.60960333262415e-02)
    p = p * c
    q = np.float32(-1.45660718464996e-05)
    q = q * x2 + np.float32(-2.13374055278905e-04)
    q = q * x2 + np.float32(-1.68282697438203e-03)
    q = q * x2 + np.float32(-7.37332916720468e-03)
    q = q * x2 + np.float32(-1.42647390514189e-02)
    return p / q  # NaN flows through the clamps
'''
