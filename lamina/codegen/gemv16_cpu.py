"""A bfloat16 / float16 GEMV for few rows on the CPU: ``out = x @ w^T (+ b)``, reading the weight once.

Decoding multiplies one token (or a handful) by every weight matrix, so its speed is how fast the
weights stream from memory. torch's 16-bit linear on a CPU reaches about half the copy bandwidth
(oneDNN; the issue's 856 MB Llama in bf16: 42 ms/token). This kernel widens each 16-bit weight to
float32 in registers (bf16: a shift; f16: F16C's conversion), accumulates in float32 with 16-lane
vectors, prefetches the next rows (``codegen/prefetch.py``), and splits the output channels over
threads; the input row is widened once into a float32 scratch. One row only: at 2048 x 5632 it
streams 22 GB/s against torch's 13, but at 4 rows the per-row conversions make it compute-bound
(9 GB/s, torch 10) and torch's oneDNN kernel (AVX-512 BF16 dot products) wins. The result is rounded to the 16-bit type as
torch rounds its own (float32 accumulation, one rounding at the end).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.dtypes import DType
from .prefetch import SOURCE as PREFETCH_SOURCE

PREFIX = {DType.bf16: "bf16", DType.f16: "f16"}
PREFETCH_BYTES = 4096  # how far ahead of the row being read to prefetch (as the quantized GEMV)
MAX_ROWS = 1  # decoding one token; more rows go to torch (see the module doc)


@dataclass(frozen=True)
class Gemv16Variant:
    dtype: DType
    k: int
    bias: bool

    @property
    def name(self) -> str:
        return f"k_gemv_{PREFIX[self.dtype]}_k{self.k}{'_bias' if self.bias else ''}"


def gemv16_source(v: Gemv16Variant) -> str:
    """Numba source of ``v.name(x, w, b, out, M, N)``: x [M*K], w [N*K], b [N] (read only with bias),
    out [M*N], all int16 bits of the 16-bit type; M rows, N output channels."""
    p, k = PREFIX[v.dtype], v.k
    ahead = max(1, -(-PREFETCH_BYTES // (2 * k)))
    result = f"acc + {p}_load(b[n])" if v.bias else "acc"
    return PREFETCH_SOURCE + f'''
@numba.njit(parallel={{'prange': True}}, cache=True, nogil=True, error_model='numpy', boundscheck=False,
            fastmath={{'reassoc', 'contract'}})
def {v.name}(x, w, b, out, M, N):
    xf = np.empty(M * {k}, np.float32)
    for i in range(M * {k}):
        xf[i] = {p}_load(x[i])
    chunks = min(N, 64)
    for c in numba.prange(chunks):
        prefer_wide_vectors()
        for n in range(c * N // chunks, (c + 1) * N // chunks):
            for q in range(0, {2 * k}, 64):
                prefetch(w, (n + {ahead}) * {k} + q // 2)
            for m in range(M):
                acc = np.float32(0.0)
                for j in range({k}):
                    acc += xf[np.uint64(m * {k} + j)] * {p}_load(w[np.uint64(n * {k} + j)])
                out[np.uint64(m * N + n)] = {p}_store({result})
'''
