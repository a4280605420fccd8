"""A GEMV in C for few rows on the CPU: ``out = x @ w^T (+ b)`` in float32, bfloat16 or float16,
reading the weight once.

Decoding multiplies one token (or a handful) by every weight matrix, so its speed is how fast the
weights stream from memory. torch's float32 linear (MKL's sgemv/sgemm) streams 14-18 GB/s at one
row on the AMD EPYC of benchmarks/RESULTS.md and 5-9 GB/s at two to eight rows; a plain loop over
each weight row, vectorized by the C compiler with 16-lane accumulators and split over the output
channels with OpenMP, reads 27-31 GB/s (torch.sum's own read rate there is 31). 16-bit weights are
widened to float32 in registers (``lm_bf16_load`` / ``lm_f16_load`` of the prelude) and the sum is
rounded once to the 16-bit type, as torch rounds its own. ``MAX_ROWS`` says up to how many rows a
dtype's GEMV beats torch (measured: past it oneDNN's 16-bit kernels and MKL's float32 GEMM win).

Each thread streams ``CHANNELS`` weight rows at once (output channels n .. n + 3; the last N % 4 one at a
time): on the Intel Xeon of benchmarks/RESULTS.md one row at a time read 25 GB/s of float32 weights at
one input row and 14-20 at two to eight, four at a time 27 and 19-25 (torch's linear: 27, and 10-26),
bfloat16 20 -> 23 GB/s (torch 19). On CPUs with AVX512-BF16 one bfloat16 row runs ``vdpbf16ps`` on the
weight's pairs instead of widening them, ``BF16_DOT_CHANNELS`` rows at once, and prefetches the rows it
streams next: 23 -> 29-30 GB/s there, about what one core's outstanding misses allow (a copy runs 16.9
GB/s on one thread, 32 on two).
Rows are taken four, then two, then one at a time, so that each weight value loaded feeds every row of
the block. 16-bit input rows are widened to float32 once, into
the caller's ``scratch`` (M x K float32; a float32 GEMV reads x itself and takes NULL). The size K is an argument: one function per
dtype serves every layer.
"""
from __future__ import annotations

from ..ir.dtypes import DType

MAX_ROWS = {DType.f32: 8, DType.bf16: 1, DType.f16: 1}
ROW_BLOCKS = (4, 2, 1)
CHANNELS = 4  # weight rows streamed at once by a thread
BF16_DOT_CHANNELS = 8  # ... by the one-row vdpbf16ps loop (2-3% faster than 4 over decode's shapes)
ARGUMENTS = "pppppiii"  # x, w, b (NULL: no bias), out, scratch, M, N, K (``native_kernels.ARGUMENT_TYPES``)

_TYPES = {DType.f32: ("f32", "float", "", ""),
          DType.bf16: ("bf16", "int16_t", "lm_bf16_load", "lm_bf16_store"),
          DType.f16: ("f16", "int16_t", "lm_f16_load", "lm_f16_store")}


def gemv_name(dtype: DType) -> str:
    return f"lamina_gemv_{_TYPES[dtype][0]}"


def _row_block(rows: int, load: str, store: str, channels: int = 1) -> str:
    """The loop over ``channels`` weight rows at once (``w0``, ``w1``, ...: output channels ``n`` on) for
    ``rows`` input rows at once (the last ``M - m`` at least that many)."""
    accumulators = ", ".join(f"a{r}_{c} = 0.0f" for r in range(rows) for c in range(channels))
    names = ", ".join(f"a{r}_{c}" for r in range(rows) for c in range(channels))
    values = " ".join(f"const float v{c} = {load}(w{c}[j]);" for c in range(channels))
    body = " ".join(f"a{r}_{c} += xr[{r} * K + j] * v{c};" for r in range(rows) for c in range(channels))
    stores = " ".join(f"out[(m + {r}) * N + n + {c}] = {store}(a{r}_{c} + bias{c});"
                      for r in range(rows) for c in range(channels))
    return f"""      if (M - m >= {rows}) {{
        const float* restrict xr = xf + m * K;
        float {accumulators};
        #pragma omp simd reduction(+:{names})
        for (int64_t j = 0; j < K; j++) {{ {values} {body} }}
        {stores}
        m += {rows};
        continue;
      }}
"""


def _channels(count: int, ctype: str, load: str, store: str) -> str:
    """The body of the loop over output channels ``n`` .. ``n + count - 1``: their weight rows, biases and
    row blocks."""
    rows = " ".join(f"const {ctype}* restrict w{c} = w + (n + {c}) * K;" for c in range(count))
    biases = " ".join(f"const float bias{c} = b ? {load}(b[n + {c}]) : 0.0f;" for c in range(count))
    blocks = "".join(_row_block(r, load, store, count) for r in ROW_BLOCKS)
    return f"""    {rows}
    {biases}
    for (int64_t m = 0; m < M;) {{
{blocks}    }}
"""


def _bf16_dot_channels(count: int) -> str:
    """One row of bfloat16 x times weight rows ``n`` .. ``n + count - 1`` with ``vdpbf16ps`` (pairs of bfloat16
    products added into float32 lanes), each row's line ``count`` rows on prefetched: the next rows this
    thread streams."""
    rows = " ".join(f"const int16_t* restrict w{c} = w + (n + {c}) * K; __m512 a{c} = _mm512_setzero_ps();"
                    for c in range(count))
    prefetch = " ".join(f"_mm_prefetch((const char*)(w{c} + j + {count} * K), _MM_HINT_T0);" for c in range(count))
    dots = " ".join(f"a{c} = _mm512_dpbf16_ps(a{c}, xv, (__m512bh)_mm512_loadu_si512(w{c} + j));"
                    for c in range(count))
    ends = " ".join(f"""
    float s{c} = _mm512_reduce_add_ps(a{c});
    for (int64_t j = whole; j < K; j++) s{c} += lm_bf16_load(x[j]) * lm_bf16_load(w{c}[j]);
    out[n + {c}] = lm_bf16_store(s{c} + (b ? lm_bf16_load(b[n + {c}]) : 0.0f));""" for c in range(count))
    return f"""    {rows}
    for (int64_t j = 0; j < whole; j += 32) {{
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + j);
      {prefetch}
      {dots}
    }}{ends}
"""


BF16_DOT = f"""
#ifdef __AVX512BF16__
#include <immintrin.h>
/* one bfloat16 row: x's values are bfloat16 already, so vdpbf16ps multiplies them with the weight's exactly
   and adds into float32 (denormal inputs read as zero), as the widening loops do, at the memory's speed */
static void lamina_gemv1_bf16(const int16_t* restrict x, const int16_t* restrict w, const int16_t* restrict b,
                              int16_t* restrict out, int64_t N, int64_t K) {{
  const int64_t whole = K / 32 * 32, full = N / {BF16_DOT_CHANNELS} * {BF16_DOT_CHANNELS};
  #pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < full; n += {BF16_DOT_CHANNELS}) {{
{_bf16_dot_channels(BF16_DOT_CHANNELS)}  }}
  for (int64_t n = full; n < N; n++) {{
{_bf16_dot_channels(1)}  }}
}}
#endif
"""


def needs_scratch(dtype: DType) -> bool:
    """Whether the GEMV of ``dtype`` widens its input rows into a float32 scratch of M x K."""
    return dtype != DType.f32


def gemv_source(dtype: DType) -> str:
    """C source of ``gemv_name(dtype)(x, w, b, out, scratch, M, N, K)``: x [M, K], w [N, K], b [N] or
    NULL, out [M, N], all contiguous, 16-bit floats as their int16 bits; scratch [M, K] float32 where
    ``needs_scratch``. Needs ``cpu_c.PRELUDE``."""
    _, ctype, load, store = _TYPES[dtype]
    widen = (f"  for (int64_t i = 0; i < M * K; i++) scratch[i] = {load}(x[i]);\n  const float* restrict xf = scratch;"
             if needs_scratch(dtype) else "  const float* restrict xf = x;")
    one_row = """#ifdef __AVX512BF16__
  if (M == 1) { lamina_gemv1_bf16(x, w, b, out, N, K); return; }
#endif
""" if dtype == DType.bf16 else ""
    return f"""{BF16_DOT if dtype == DType.bf16 else ""}
void {gemv_name(dtype)}(const {ctype}* restrict x, const {ctype}* restrict w, const {ctype}* restrict b,
                        {ctype}* restrict out, float* restrict scratch, int64_t M, int64_t N, int64_t K) {{
{one_row}{widen}
  const int64_t whole = N / {CHANNELS} * {CHANNELS};
  #pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < whole; n += {CHANNELS}) {{
{_channels(CHANNELS, ctype, load, store)}  }}
  for (int64_t n = whole; n < N; n++) {{  /* the last N % CHANNELS channels, one at a time */
{_channels(1, ctype, load, store)}  }}
}}
"""
