"""bfloat16 and float16 in Numba CPU kernels: stored as 16 bits, computed in float32.

NumPy has no bfloat16, so the cpu backend hands kernels every 16-bit float buffer as int16 (the same
bytes). A kernel widens what it loads (``bf16_load``, ``f16_load``) and narrows what it stores
(``bf16_store``, ``f16_store``), and all arithmetic between runs in float32, as inductor's CPU code
does; a cast to a 16-bit type inside a kernel rounds there (``bf16_round``, ``f16_round``).

- bfloat16 is the top half of a float32: widening is a shift; narrowing rounds to nearest even
  (``(bits + 0x7FFF + lsb) >> 16``) and keeps NaNs quiet NaNs, bit for bit as ``tensor.to(torch.bfloat16)``.
  Integer arithmetic only, so the loops vectorize.
- float16 goes through LLVM's ``half`` type (``fpext`` / ``fptrunc``: F16C's vcvtph2ps / vcvtps2ph).
"""

SOURCE = r'''
@_intrinsic
def _f32_to_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(_types.int32))

    return _types.int32(_types.float32), codegen


@numba.njit(inline="always", error_model="numpy")
def bf16_load(bits):
    return _bits_to_f32(np.int32(bits) << np.int32(16))


@numba.njit(inline="always", error_model="numpy")
def bf16_store(x):
    b = _f32_to_bits(x)
    rounded = (b + np.int32(0x7FFF) + ((b >> np.int32(16)) & np.int32(1))) >> np.int32(16)
    quiet_nan = (b >> np.int32(16)) | np.int32(0x40)
    return np.int16(quiet_nan if x != x else rounded)


@numba.njit(inline="always", error_model="numpy")
def bf16_round(x):
    return bf16_load(bf16_store(x))


@_intrinsic
def f16_load(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], _ir.HalfType()), _ir.FloatType())

    return _types.float32(_types.int16), codegen


@_intrinsic
def f16_store(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], _ir.HalfType()), _ir.IntType(16))

    return _types.int16(_types.float32), codegen


@numba.njit(inline="always", error_model="numpy")
def f16_round(x):
    return f16_load(f16_store(x))
'''
