"""The quantized prefill GEMM in C: ``out = x @ dequantize(q)^T`` for a ``qlinear`` over many rows.

Each thread takes tiles of 32 output channels in turn, dequantizes a tile straight into the C
GEMM's packed layout (``gemm_c.py``: [K, 32], channel j of the tile in column j) in a buffer of its
own, and multiplies every block of rows by it with the GEMM's register blocks. The float weight
never exists beyond one tile per thread, the tile stays in the core's cache while all rows pass
over it, and dequantizing and multiplying share one OpenMP pool. (The path before: a Numba kernel
dequantized blocks of channels, torch packed them, the C GEMM multiplied them: three thread pools
taking turns on the cores, 0.8x the float32 prefill.)

Dequantizing computes what the interpreter's ``quant_format.dequantize`` and the Numba
kernels do, in the same float32 operations: ``(v - offset) * scale``, with ``v`` the stored int8,
uint8 or 4-bit value (a byte of a 32-value block holds value j in its low nibble and j + 16 in
its high one) and ``offset`` the zero point (``asym``) or the format's constant. The results are
therefore the blocked path's, bit for bit.
"""
from __future__ import annotations

from ..ir.quant_format import BLOCK4, QuantFormat
from .gemm_c import ROWS, TILE, block_functions

NAME = "lamina_qgemm_f32"
# x, q, scales, zeros (NULL: sym), out, M, N, K, group, out's row stride, storage (``STORAGE``), sym offset,
# whether to quantize x's rows first (``act=int8``)
ARGUMENTS = "pppppiiiiiifi"
STORAGE = {(8, "sym"): 0, (8, "asym"): 1, (4, "sym"): 2, (4, "asym"): 2}  # int8, uint8, 4-bit nibbles


def storage(fmt: QuantFormat) -> int:
    """The ``storage`` argument of ``fmt``'s weights."""
    return STORAGE[(fmt.bits, fmt.scheme)]


def qgemm_source() -> str:
    """C source of ``NAME(x, q, s, z, out, M, N, K, G, ldc, storage, offset, act_int8)``: x float32 [M, K],
    q the packed weight [N, K] (int8, uint8) or [N, K / 2] (4-bit), s and z float32 [N, K / G] (z NULL
    for ``sym``: then every offset is ``offset``), out [M, N] with rows ``ldc`` apart. With ``act_int8``
    the rows of x are first quantized as ``quant_format.quantize_rows`` does and the GEMM multiplies
    their values (``act=int8`` past the integer kernels' rows). Needs ``cpu_c.PRELUDE`` and AVX-512F."""
    cases = " ".join(f"case {r}: lamina_gemm_block{r}(xr, tile, cr, zero, zero, lo, hi, ldc, K); break;"
                     for r in range(1, ROWS + 1))
    return f"""
#include <immintrin.h>
{block_functions()}
static void lamina_qgemm_row(const void* q, const float* s, const float* z, float fixed, float* restrict row,
                             int64_t n, int64_t K, int64_t G, int64_t storage) {{
  const int64_t groups = K / G;
  for (int64_t g = 0; g < groups; g++) {{
    const float sc = s[n * groups + g], off = z ? z[n * groups + g] : fixed;
    const int64_t k0 = g * G;
    if (storage == 0) {{
      const int8_t* v = (const int8_t*)q + n * K;
      for (int64_t k = k0; k < k0 + G; k++) row[k] = ((float)v[k] - off) * sc;
    }} else if (storage == 1) {{
      const uint8_t* v = (const uint8_t*)q + n * K;
      for (int64_t k = k0; k < k0 + G; k++) row[k] = ((float)v[k] - off) * sc;
    }} else {{
      const uint8_t* v = (const uint8_t*)q + n * (K / 2);
      for (int64_t b = k0 / {BLOCK4}; b < (k0 + G) / {BLOCK4}; b++) {{
        for (int64_t j = 0; j < {BLOCK4 // 2}; j++) {{
          const uint8_t byte = v[b * {BLOCK4 // 2} + j];
          row[b * {BLOCK4} + j] = ((float)(byte & 15) - off) * sc;
          row[b * {BLOCK4} + j + {BLOCK4 // 2}] = ((float)(byte >> 4) - off) * sc;
        }}
      }}
    }}
  }}
}}

{transpose16_source()}
/* channels n0 .. n0 + 15 (zeros from N on) at k0 .. k0 + 15, a chunk inside one group, dequantized and
   stored transposed: tile row k0 + i, columns j0 .. j0 + 15 */
static inline void lamina_qgemm_chunk(const void* q, const float* s, const float* z, float fixed, float* tile,
                                      int64_t n0, int64_t j0, int64_t k0, int64_t N, int64_t K, int64_t G,
                                      int64_t storage) {{
  __m512 r[16];
  const int64_t groups = K / G, g = k0 / G;
  for (int i = 0; i < 16; i++) {{
    const int64_t n = n0 + i;
    if (n >= N) {{ r[i] = _mm512_setzero_ps(); continue; }}
    __m512i v;
    if (storage == 0) v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)((const int8_t*)q + n * K + k0)));
    else if (storage == 1) v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)((const uint8_t*)q + n * K + k0)));
    else {{
      const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(
          (const __m128i*)((const uint8_t*)q + n * (K / 2) + k0 / {BLOCK4} * {BLOCK4 // 2})));
      v = k0 % {BLOCK4} ? _mm512_srli_epi32(bytes, 4) : _mm512_and_si512(bytes, _mm512_set1_epi32(15));
    }}
    const __m512 off = _mm512_set1_ps(z ? z[n * groups + g] : fixed), sc = _mm512_set1_ps(s[n * groups + g]);
    r[i] = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(v), off), sc);
  }}
  lamina_transpose16(r);
  for (int i = 0; i < 16; i++) _mm512_store_ps(tile + (k0 + i) * {TILE} + j0, r[i]);
}}

/* the rows of x quantized (``lm_int8_row_scale``, ``lm_int8_quantize``) and given back as the values they
   stand for, q * scale (a NaN stays NaN, and makes every output of its row NaN, as in the reference) */
static void lamina_qgemm_quantize_rows(const float* restrict x, float* restrict xf, int64_t M, int64_t K) {{
  #pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; m++) {{
    const float sx = lm_int8_row_scale(x + m * K, K);
    for (int64_t k = 0; k < K; k++) xf[m * K + k] = lm_int8_quantize(x[m * K + k], sx) * sx;
  }}
}}

void {NAME}(const float* restrict x, const void* restrict q, const float* restrict s, const float* restrict z,
            float* restrict out, int64_t M, int64_t N, int64_t K, int64_t G, int64_t ldc, int64_t storage,
            float offset, int64_t act_int8) {{
  float* quantized = act_int8 ? (float*)aligned_alloc(64, (size_t)(M * K * sizeof(float) + 63) / 64 * 64) : NULL;
  if (quantized) lamina_qgemm_quantize_rows(x, quantized, M, K);
  const float* rows_of_x = quantized ? quantized : x;
  const int64_t tiles = (N + {TILE - 1}) / {TILE}, blocks = (M + {ROWS - 1}) / {ROWS};
  #pragma omp parallel
  {{
    float* tile = (float*)aligned_alloc(64, (size_t)(K * {TILE} * sizeof(float) + 63) / 64 * 64);
    float* row = (float*)aligned_alloc(64, (size_t)(K * sizeof(float) + 63) / 64 * 64);
    const __m512 zero = _mm512_setzero_ps();
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; t++) {{
      const int64_t left = N - t * {TILE};
      if (K % 16 == 0 && G % 16 == 0) {{  /* chunks of 16 x 16 inside one group: dequantized as vectors */
        for (int64_t k0 = 0; k0 < K; k0 += 16) {{
          lamina_qgemm_chunk(q, s, z, offset, tile, t * {TILE}, 0, k0, N, K, G, storage);
          lamina_qgemm_chunk(q, s, z, offset, tile, t * {TILE} + 16, 16, k0, N, K, G, storage);
        }}
      }} else {{
        for (int64_t j = 0; j < {TILE}; j++) {{
          if (j < left) lamina_qgemm_row(q, s, z, offset, row, t * {TILE} + j, K, G, storage);
          else for (int64_t k = 0; k < K; k++) row[k] = 0.0f;
          for (int64_t k = 0; k < K; k++) tile[k * {TILE} + j] = row[k];
        }}
      }}
      const __mmask16 lo = lamina_gemm_mask_lo(left), hi = lamina_gemm_mask_hi(left);
      for (int64_t m = 0; m < blocks; m++) {{
        const int64_t m0 = m * {ROWS}, rows = M - m0 < {ROWS} ? M - m0 : {ROWS};
        const float* xr = rows_of_x + m0 * K;
        float* cr = out + m0 * ldc + t * {TILE};
        switch (rows) {{ {cases} }}
      }}
    }}
    free(tile);
    free(row);
  }}
  free(quantized);
}}
"""


def transpose16_source() -> str:
    """``lamina_transpose16``: 16 zmm registers of 16 floats (or any 32-bit lanes) transposed in registers,
    defined once in a translation unit however many sources include it."""
    return "#ifndef LAMINA_TRANSPOSE16\n#define LAMINA_TRANSPOSE16\n" + _TRANSPOSE16 + "#endif\n"


_TRANSPOSE16 = """/* the 16 x 16 floats r[0..15] transposed in registers: unpacks of 32-bit, then 64-bit pairs, then 128-bit
   lanes (row 4 L + c of the result gathers lane L of r[c], r[4 + c], r[8 + c], r[12 + c] after the unpacks) */
static inline void lamina_transpose16(__m512 r[16]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 8; i++) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    const __m512d a0 = _mm512_castps_pd(a[4 * i]), a1 = _mm512_castps_pd(a[4 * i + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * i + 2]), a3 = _mm512_castps_pd(a[4 * i + 3]);
    b[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  for (int c = 0; c < 4; c++) {
    const __m512 p = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x44), q = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xEE);
    const __m512 u = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x44), v = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(p, u, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(p, u, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(q, v, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(q, v, 0xDD);
  }
}
"""
