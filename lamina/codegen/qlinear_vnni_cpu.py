"""``qlinear`` with ``act=int8`` for a few rows on an AVX-512 VNNI CPU: a Numba kernel around ``vnni_dot.py``.

One call does what ``act=int8`` means (``ir/quant_format.int8_product``) for M rows of x:

1. each row is quantized to int8 (its scale ``max|x| / 127``, values rounded half to even, the
   same float32 arithmetic as ``quantize_rows``) and written in the byte layout the dot product
   reads (``vnni_dot.py``): the 4-bit chunk order; the per-lane offset corrections (sym) and
   per-group sums of x (asym) are made in the same pass;
2. output channels are split over threads in chunks, and each channel's row of packed bytes is
   dotted with every x row while it is in L1 (the LLVM IR function, linked in by the intrinsic
   ``_vnni_dot``), less the asymmetric zero points' ``sum_g scale_g zero_g xsum_g``; the result
   is scaled by the row's scale. Nothing is precomputed from the weight, so a weight repacked in
   place is read as it is.

The corrections and the final scaling are in float64; the result is rounded to float32 once.
"""
from __future__ import annotations

from .vnni_dot import LANES, VnniDot

HEADER = '''
import llvmlite.binding as _llvm
from llvmlite import ir as _ir
from numba.core import cgutils as _cgutils
from numba.core import types as _types
from numba.extending import intrinsic as _intrinsic
'''


def vnni_source(dot: VnniDot) -> str:
    """Numba source of ``dot.name(x, q, s, z, out, M, N)``: x float32 [M, K], q the packed weight
    [N, row bytes], s and z float32 [N, groups] (z: zero points, read for asym only), out float32 [M, N]."""
    f = dot.fmt
    k, groups, chunks = dot.k, dot.k // dot.group, dot.chunks
    row_bytes = k // 2 if f.bits == 4 else k
    init_len = chunks * LANES
    if f.bits == 4:  # per 128-value chunk: the low halves of its four blocks, then the high halves
        place = (f"for c in range({chunks}):\n"
                 "    for b in range(4):\n"
                 "        for h in range(2):\n"
                 "            for j in range(16):\n"
                 "                xb[m, c * 128 + h * 64 + b * 16 + j] = np.uint8(qx[c * 128 + b * 32 + h * 16 + j] & 255)")
    else:
        place = f"for kk in range({k}):\n    xb[m, kk] = np.uint8(qx[kk] & 255)"
    if dot.uses_init and f.bits == 4:  # lane l of chunk c: x values c*128 + l//4*32 + l%4*4 + (0..3, 16..19)
        place += (f"\nfor c in range({chunks}):\n"
                  "    for lane in range(16):\n"
                  "        base = c * 128 + lane // 4 * 32 + lane % 4 * 4\n"
                  "        t = np.int32(0)\n"
                  "        for u in range(4):\n"
                  "            t += qx[base + u] + qx[base + 16 + u]\n"
                  f"        init[m, c * {LANES} + lane] = -{dot.bias} * t")
    elif dot.uses_init:  # lane l of chunk c: x values c*64 + 4l + (0..3)
        place += (f"\nfor c in range({chunks * LANES}):\n"
                  "    t = np.int32(0)\n"
                  "    for u in range(4):\n"
                  "        t += qx[c * 4 + u]\n"
                  f"    init[m, c] = -{dot.bias} * t")
    if f.scheme == "asym":
        place += (f"\nfor g in range({groups}):\n"
                  "    t = np.int32(0)\n"
                  f"    for kk in range(g * {dot.group}, (g + 1) * {dot.group}):\n"
                  "        t += qx[kk]\n"
                  "    xsum[m, g] = t")
    place = "\n".join(" " * 8 + line for line in place.splitlines())
    correction = ""
    if f.scheme == "asym":
        correction = (f"                for g in range({groups}):\n"
                      "                    r -= np.float64(s[n, g]) * np.float64(z[n, g]) * xsum[m, g]\n")
    return f'''
_IR = """{dot.source()}"""


@_intrinsic
def _vnni_dot(typingctx, q, x, s, init):
    def codegen(context, builder, signature, args):
        context.active_code_library.add_llvm_module(_llvm.parse_assembly(_IR))
        ptr = _ir.PointerType()
        fn = _cgutils.get_or_insert_function(builder.module, _ir.FunctionType(_ir.DoubleType(), [ptr] * 4),
                                             "{dot.name}")
        return builder.call(fn, [builder.inttoptr(a, ptr) for a in args])

    return _types.float64(_types.uintp, _types.uintp, _types.uintp, _types.uintp), codegen


@numba.njit(parallel={{'prange': True}}, cache=True, nogil=True, error_model='numpy', boundscheck=False,
            fastmath={{'reassoc', 'contract', 'nsz'}})
def {dot.name}(x, q, s, z, out, M, N):
    xb = np.empty((M, {k}), np.uint8)
    init = np.empty((M, {init_len}), np.int32)
    xsum = np.empty((M, {groups}), np.float64)
    sxs = np.empty(M, np.float64)
    qx = np.empty({k}, np.int32)
    tops = np.empty(16, np.float32)
    for m in range(M):
        for j in range(16):  # the largest magnitude, in 16 lanes (a scalar max loop stays scalar)
            tops[j] = np.float32(0.0)
        for kk in range(0, {k}, 16):
            for j in range(16):
                tops[j] = max(tops[j], abs(x[m, kk + j]))
        top = np.float32(0.0)
        for j in range(16):
            top = max(top, tops[j])
        sx = np.float32(top / np.float32(127.0))
        d = sx if sx != np.float32(0.0) else np.float32(1.0)
        sxs[m] = sx
        for kk in range({k}):
            qx[kk] = np.int32(min(max(np.rint(np.float32(x[m, kk] / d)), np.float32(-127.0)), np.float32(127.0)))
{place}
    chunks = min(N, 64)
    for ch in numba.prange(chunks):
        # the addresses are taken in the loop: Numba frees a local array after its last use, and
        # a raw address does not count as one (taken before the loop, xb and init were freed
        # before the threads read them)
        qb, xbb, sb, ib = q.ctypes.data, xb.ctypes.data, s.ctypes.data, init.ctypes.data
        for n in range(ch * N // chunks, (ch + 1) * N // chunks):
            for m in range(M):
                r = _vnni_dot(qb + n * {row_bytes}, xbb + m * {k}, sb + n * {groups * 4}, ib + m * {init_len * 4})
{correction}                out[m, n] = np.float32(r * sxs[m])
'''

