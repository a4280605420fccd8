"""Dequantize-in-the-loop GEMV/GEMM for the CPU: ``out[m, n] = sum_k x[m, k] * w[n, k]`` with ``w``
stored quantized (``ir/quant_format.py``) and never materialised in float.

One Numba kernel per variant (bits, scheme, K, group, one row or several), with K and the
group as constants so LLVM sees fixed trip counts (a lane count held in a variable reaches the
parallel loop's body as a run-time value, and the 16-lane loops then stay scalar: 8x slower). The operands arrive as views that make
every inner index a plain loop variable: the packed weight as [N, blocks, bytes per block]
(and flat, for prefetching), x as [M, blocks, values per block], scales and zero points as
[N, groups]. Output channels are split over threads in chunks; each chunk keeps lane
accumulators in a scratch row (a lane-blocked reduction written out in the source, the
form LLVM vectorizes reliably) and adds ``(v - offset) * x * scale`` into them block by block, so
the weight is never widened to float in memory and is read once for all M rows. For 8-bit
weights the offset (an asym zero point) is taken out of the inner loop:
``sum (v - o) x s = sum v x s - sum_g o_g s_g xsum_g``, each group's ``xsum`` made once per call.

4-bit blocks are 16 bytes whose low nibbles are values 0..15 and high nibbles 16..31; the
inner loop reads x[j] and x[j + 16] as two contiguous runs and unpacks in float
(``hi = trunc(w / 16)`` by an int32 round trip, ``lo = w - 16 hi``), which LLVM vectorizes
where it leaves byte masks and shifts scalar. LLVM's choice is fragile here: the same loop
without the ``- offset`` terms (the offset summed out as for 8-bit) stays scalar and runs 8x
slower, so 4-bit keeps them; ``tests/quant/test_qlinear_cpu.py`` times nothing, but
``benchmarks/quant.py`` shows a regression at once.

Each row starts by prefetching the bytes about ``PREFETCH_BYTES`` ahead (``prefetch.py``):
the unpacking keeps too few loads in flight for the hardware prefetchers alone. The
one-row variant (decoding) drops the loop over rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir.quant_format import BLOCK4, QuantFormat

PREFETCH_BYTES = 2048


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
    def row_bytes(self) -> int:
        return self.blocks * self.block_bytes

    @property
    def name(self) -> str:
        f = self.fmt
        return f"k_qlinear_q{f.bits}_{f.scheme}_k{self.k}_g{self.group}_{'gemv' if self.one_row else 'gemm'}"


def qlinear_source(v: QLinearVariant) -> str:
    """Numba source of ``v.name(x, q, qflat, s, z, out, M, N)``: x float32 [M, blocks, block values], q
    [N, blocks, block bytes] and the same bytes flat, s and z [N, groups] (z unread for sym), out
    float32 [M, N]."""
    f = v.fmt
    groups, per_group, lanes = v.k // v.group, v.group // v.block_values, v.block_bytes
    rows = "1" if v.one_row else "M"
    row = "0" if v.one_row else "m"
    ahead = max(1, -(-PREFETCH_BYTES // v.row_bytes))
    offset = "z[n, gi]" if f.scheme == "asym" else f"np.float32({f.offset})"
    if f.bits == 4:  # the offset stays in the loop: without it LLVM leaves this loop scalar (8x slower)
        update = ("w = np.float32(q[n, b, j])\n"
                  "hi = np.float32(np.int32(w * np.float32(0.0625)))\n"
                  "lo = w - hi * np.float32(16.0)\n"
                  f"acc[{row}, j] += ((lo - off) * x[{row}, b, j] + (hi - off) * x[{row}, b, j + 16]) * sc")
        prologue, correction, in_group = "", "", f"                off = {offset}\n"
    else:  # sum (v - o) x s = sum v x s - sum_g o_g s_g xsum_g: the offset out of the loop
        update = f"acc[{row}, j] += np.float32(q[n, b, j]) * x[{row}, b, j] * sc"
        prologue, correction, in_group = "", "", ""
        if f.scheme == "asym":
            prologue = f'''    xsum = np.zeros((M, {groups}), np.float32)
    for m in range(M):
        for gi in range({groups}):
            for b in range(gi * {per_group}, (gi + 1) * {per_group}):
                for j in range({v.block_values}):
                    xsum[m, gi] += x[m, b, j]
'''
            correction = (f"                for gi in range({groups}):\n"
                          f"                    r -= {offset} * s[n, gi] * xsum[m, gi]\n")
    inner = [f"for j in range({lanes}):", *("    " + line for line in update.splitlines())]
    if not v.one_row:
        inner = ["for m in range(M):", *("    " + line for line in inner)]
    body = "\n".join(" " * 20 + line for line in inner)
    return f'''
@numba.njit(parallel={{'prange': True}}, cache=True, nogil=True, error_model='numpy', boundscheck=False,
            fastmath={{'reassoc', 'contract', 'nsz', 'arcp', 'afn'}})
def {v.name}(x, q, qflat, s, z, out, M, N):
{prologue}    chunks = min(N, 64)
    for c in numba.prange(chunks):
        prefer_wide_vectors()
        acc = np.empty(({rows}, {lanes}), np.float32)
        for n in range(c * N // chunks, (c + 1) * N // chunks):
            for p in range(0, {v.row_bytes}, 64):
                prefetch(qflat, (n + {ahead}) * {v.row_bytes} + p)
            for m in range({rows}):
                for j in range({lanes}):
                    acc[m, j] = np.float32(0.0)
            for gi in range({groups}):
                sc = s[n, gi]
{in_group}                for bb in range({per_group}):
                    b = gi * {per_group} + bb
{body}
            for m in range({rows}):
                r = np.float32(0.0)
                for j in range({lanes}):
                    r += acc[m, j]
{correction}                out[m, n] = r
'''


def dequantize_source(v: QLinearVariant) -> str:
    """Numba source of ``v.name + '_dequantize'(q, s, z, out, N)``: the float32 weight rows [N, blocks,
    block values] of packed rows q [N, blocks, block bytes], in one parallel pass (the prefill path
    multiplies such blocks with torch.mm; the same arithmetic as the interpreter's dequantize)."""
    f = v.fmt
    groups, per_group, lanes = v.k // v.group, v.group // v.block_values, v.block_bytes
    offset = "z[n, gi]" if f.scheme == "asym" else f"np.float32({f.offset})"
    if f.bits == 4:
        store = ("                    w = np.float32(q[n, b, j])\n"
                 "                    hi = np.float32(np.int32(w * np.float32(0.0625)))\n"
                 "                    out[n, b, j] = (w - hi * np.float32(16.0) - off) * sc\n"
                 "                    out[n, b, j + 16] = (hi - off) * sc\n")
    else:
        store = "                    out[n, b, j] = (np.float32(q[n, b, j]) - off) * sc\n"
    return f'''
@numba.njit(parallel={{'prange': True}}, cache=True, nogil=True, error_model='numpy', boundscheck=False)
def {v.name}_dequantize(q, s, z, out, N):
    for n in numba.prange(N):
        prefer_wide_vectors()
        for gi in range({groups}):
            sc = s[n, gi]
            off = {offset}
            for bb in range({per_group}):
                b = gi * {per_group} + bb
                for j in range({lanes}):
{store}'''
