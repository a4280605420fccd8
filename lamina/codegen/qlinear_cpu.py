"""Dequantize-in-the-loop GEMV/GEMM for the CPU: ``out[m, n] = sum_k x[m, k] * w[n, k]`` with ``w``
stored quantized (``ir/quant_format.py``) and never materialised in float.

One Numba kernel per variant (bits, scheme, K, group, one row or several), with K and the
group as constants so LLVM sees fixed trip counts. The operands arrive as views that make
every inner index a plain loop variable: the packed weight as [N, blocks, bytes per block],
x as [M, blocks, values per block], scales and zero points as [N, groups]. Output channels
are split over threads in chunks; each chunk keeps lane accumulators in a scratch row (a
lane-blocked reduction written out in the source, the form LLVM vectorizes reliably) and
adds ``(v - offset) * x * scale`` into them block by block, so the weight is never widened
to float in memory and is read once for all M rows. A 4-bit block is 16 bytes whose low
nibbles are values 0..15 and high nibbles 16..31: the inner loop reads x[j] and x[j + 16] as
two contiguous runs and unpacks in float (``hi = trunc(w / 16)``, ``lo = w - 16 hi``: exact for
0..255, and it vectorizes where LLVM leaves byte masks and shifts scalar, 8x slower). The one-row variant (decoding)
drops the loop over rows, which halves the work LLVM sees per lane.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir.quant_format import BLOCK4, QuantFormat


@dataclass(frozen=True)
class QLinearVariant:
    """What is fixed in one kernel's source; ``one_row``: the GEMV of a single input row."""

    fmt: QuantFormat
    k: int
    one_row: bool

    @property
    def group(self) -> int:
        return self.fmt.group_size(self.k)

    @property
    def block_values(self) -> int:
        """Values per block: 32 for 4-bit (16 bytes); up to 32 dividing the group for 8-bit."""
        return BLOCK4 if self.fmt.bits == 4 else math.gcd(self.group, 32)

    @property
    def block_bytes(self) -> int:
        return self.block_values // 2 if self.fmt.bits == 4 else self.block_values

    @property
    def blocks(self) -> int:
        return self.k // self.block_values

    @property
    def name(self) -> str:
        f = self.fmt
        return f"k_qlinear_q{f.bits}_{f.scheme}_k{self.k}_g{self.group}_{'gemv' if self.one_row else 'gemm'}"


def qlinear_source(v: QLinearVariant) -> str:
    """Numba source of ``v.name(x, q, s, z, out, M, N)``: x float32 [M, blocks, block values], q
    [N, blocks, block bytes], s and z [N, groups] (z unread for sym), out float32 [M, N]."""
    f = v.fmt
    per_group = v.group // v.block_values
    lanes = v.block_bytes
    offset = "z[n, gi]" if f.scheme == "asym" else f"np.float32({f.offset})"
    row = "0" if v.one_row else "m"
    if f.bits == 4:
        update = ("w = np.float32(q[n, b, j])\n"
                  "hi = np.float32(np.int32(w * np.float32(0.0625)))\n"
                  "lo = w - hi * np.float32(16.0)\n"
                  f"acc[{row}, j] += ((lo - off) * x[{row}, b, j] + (hi - off) * x[{row}, b, j + 16]) * sc")
    else:
        update = f"acc[{row}, j] += (np.float32(q[n, b, j]) - off) * x[{row}, b, j] * sc"
    inner = ["for j in range(L):", *("    " + line for line in update.splitlines())]
    if not v.one_row:
        inner = ["for m in range(M):", *("    " + line for line in inner)]
    body = "\n".join(" " * 20 + line for line in inner)
    rows = "1" if v.one_row else "M"
    return f'''
@numba.njit(parallel={{'prange': True}}, cache=True, nogil=True, error_model='numpy', boundscheck=False,
            fastmath={{'reassoc', 'contract', 'nsz', 'arcp', 'afn'}})
def {v.name}(x, q, s, z, out, M, N):
    L = {lanes}
    chunks = min(N, 64)
    for c in numba.prange(chunks):
        prefer_wide_vectors()
        acc = np.empty(({rows}, L), np.float32)
        for n in range(c * N // chunks, (c + 1) * N // chunks):
            for m in range({rows}):
                for j in range(L):
                    acc[m, j] = np.float32(0.0)
            for gi in range({v.k // v.group}):
                sc = s[n, gi]
                off = {offset}
                for bb in range({per_group}):
                    b = gi * {per_group} + bb
{body}
            for m in range({rows}):
                r = np.float32(0.0)
                for j in range(L):
                    r += acc[m, j]
                out[m, n] = r
'''
