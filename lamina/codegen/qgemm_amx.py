"""The quantized prefill GEMM on AMX tiles: ``out = x @ dequantize(q)^T`` in bfloat16 products, exactly.

A CPU with AMX (Intel Sapphire Rapids and later) multiplies 16 x 32 by 32 x 16 bfloat16 tiles into
float32 tiles at many times its float32 FMA rate. A quantized weight's values are small integers
(``v - offset``: -255..255, since zero points are integers too), and those are exact in bfloat16;
float32 activations are not, so each row of x is cut into three bfloat16 terms whose sum is x
exactly (``hi`` = x's top 16 bits, ``mid`` the top 16 bits of ``x - hi``, ``lo`` the rest, 8
significant bits at most). Every product of two terms is exact in the float32 accumulators, so

    out[m, n] = sum_g scale[n, g] * sum_{k in g} (hi + mid + lo)[m, k] * (v[n, k] - offset[n, g])

differs from the float32 GEMM on the dequantized weight only in how float32 sums round (the
group's integer weight is multiplied by its scale after the sum instead of before). With
``act=int8`` the rows are quantized first (``quantize_rows``' arithmetic) and their integer values
are one exact term; the row's scale multiplies the result.

Layout: the terms of x are bfloat16 matrices [M rounded up to 16, K]; each thread takes strips of 64
output channels, converts a strip's weights to bfloat16 pairs in the tile layout AMX reads (for
every 32 values of K, four 16 x 16-pair tiles: row r holds values 2r and 2r + 1 of each of the 16
channels), with the strip's scales transposed beside them, then for every 16 rows of x: per group,
its chunks' tile products into four accumulator tiles, stored and added into float32 rows with
their scales. Eight tiles: four accumulators, three terms of x, one of weight.

Rows with an infinity or NaN (whose terms would not sum back to them) and shapes the tiles do not
cut (K or the group not a multiple of 32) go to the float32 kernel of ``qgemm_c.py``, which must
be in the same library; so does every call where the kernel may not use AMX
(``arch_prctl(ARCH_REQ_XCOMP_PERM)`` refused).
"""
from __future__ import annotations

from ..ir.quant_format import BLOCK4
from .qgemm_c import ARGUMENTS as FLOAT_ARGUMENTS
from .qgemm_c import NAME as FLOAT_NAME
from .qgemm_c import transpose16_source

NAME = "lamina_qgemm_amx"
ARGUMENTS = FLOAT_ARGUMENTS  # the float32 kernel's call: this one replaces it
STRIP = 64  # output channels a thread converts at a time: four 16-channel tiles


def _tile_loop(terms: int) -> str:
    """One 16-row block's products for a strip, ``terms`` bfloat16 terms of x (3: float rows, 1: int8)."""
    loads = "\n".join(f"        _tile_loadd({4 + t}, a{t} + k0, stride);" for t in range(terms))
    products = "\n".join(
        f"        _tile_loadd(7, b + (c * 4 + {j}) * 512, 64);\n"
        + "\n".join(f"        _tile_dpbf16ps({j}, {4 + t}, 7);" for t in range(terms))
        for j in range(4))
    a_rows = "\n".join(f"  const uint16_t* a{t} = xa + ((int64_t){t} * Mp + m0) * K;" for t in range(terms))
    return f"""
static void lamina_amx_block{terms}(const uint16_t* restrict xa, const uint16_t* restrict b,
                                  const float* restrict st, float* restrict acc, float* restrict cbuf,
                                  int64_t Mp, int64_t m0, int64_t K, int64_t G) {{
{a_rows}
  const int64_t stride = K * 2, groups = K / G, per = G / 32;
  for (int i = 0; i < 16 * {STRIP}; i++) acc[i] = 0.0f;
  for (int64_t g = 0; g < groups; g++) {{
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (int64_t c = g * per; c < (g + 1) * per; c++) {{
      const int64_t k0 = c * 32;
{loads}
{products}
    }}
    _tile_stored(0, cbuf, 64); _tile_stored(1, cbuf + 256, 64);
    _tile_stored(2, cbuf + 512, 64); _tile_stored(3, cbuf + 768, 64);
    const float* sg = st + g * {STRIP};
    for (int j = 0; j < 4; j++) {{
      const __m512 sc = _mm512_load_ps(sg + 16 * j);
      for (int r = 0; r < 16; r++) {{
        float* a = acc + r * {STRIP} + 16 * j;
        _mm512_store_ps(a, _mm512_fmadd_ps(_mm512_load_ps(cbuf + j * 256 + r * 16), sc, _mm512_load_ps(a)));
      }}
    }}
  }}
}}
"""


def qgemm_amx_source() -> str:
    """C source of ``NAME``, with ``qgemm_c.NAME``'s arguments (that kernel is its fallback). Needs
    ``cpu_c.PRELUDE``, a compiler targeting AMX-BF16 and AVX512-BF16 (``-march=native`` on such a CPU)."""
    h = BLOCK4 // 2
    return f"""
#include <immintrin.h>
#include <omp.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

void {FLOAT_NAME}(const float* restrict x, const void* restrict q, const float* restrict s, const float* restrict z,
                  float* restrict out, int64_t M, int64_t N, int64_t K, int64_t G, int64_t ldc, int64_t storage,
                  float offset, int64_t act_int8);

{transpose16_source()}
typedef struct {{ uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; }} lamina_amx_config;

/* x's top 16 bits as a bfloat16 (truncated: x minus it is exact in float32) */
static inline uint16_t lamina_bf16_top(float v, float* rest) {{
  uint32_t bits;
  memcpy(&bits, &v, 4);
  bits &= 0xFFFF0000u;
  float top;
  memcpy(&top, &bits, 4);
  *rest = v - top;
  return (uint16_t)(bits >> 16);
}}

/* rows of x as bfloat16 terms [terms][Mp][K] (rows M.. zero) and, with act_int8, the rows' scales;
   0 where a row holds an infinity or NaN */
static int lamina_amx_terms(const float* restrict x, uint16_t* restrict xa, float* restrict sx, int64_t M,
                            int64_t Mp, int64_t K, int64_t terms) {{
  int finite = 1;
  #pragma omp parallel for schedule(static) reduction(&:finite)
  for (int64_t m = 0; m < Mp; m++) {{
    const float* xm = x + m * K;
    if (m >= M) {{
      for (int64_t t = 0; t < terms; t++) memset(xa + (t * Mp + m) * K, 0, (size_t)K * 2);
      continue;
    }}
    for (int64_t k = 0; k < K; k++) finite &= isfinite(xm[k]) ? 1 : 0;
    if (terms == 1) {{
      const float scale = lm_int8_row_scale(xm, K);
      sx[m] = scale;
      for (int64_t k = 0; k < K; k++) {{
        float rest;
        xa[m * K + k] = lamina_bf16_top(lm_int8_quantize(xm[k], scale), &rest);  /* an integer: exact */
      }}
    }} else {{
      for (int64_t k = 0; k < K; k++) {{
        float r1, r2, r3;
        xa[m * K + k] = lamina_bf16_top(xm[k], &r1);
        xa[(Mp + m) * K + k] = lamina_bf16_top(r1, &r2);
        xa[(2 * Mp + m) * K + k] = lamina_bf16_top(r2, &r3);  /* r3 is 0: x has 24 significant bits */
      }}
    }}
  }}
  return finite;
}}

/* channels n0 .. n0 + {STRIP - 1} (zero from N on) as bfloat16 pairs of v - offset in the tile layout, and their
   scales transposed: st[g * {STRIP} + j] */
static void lamina_amx_strip(const void* q, const float* s, const float* z, float fixed, uint16_t* restrict b,
                             float* restrict st, int64_t n0, int64_t N, int64_t K, int64_t G, int64_t storage) {{
  const int64_t groups = K / G, chunks = K / 32;
  for (int64_t g = 0; g < groups; g++)
    for (int j = 0; j < {STRIP}; j++) st[g * {STRIP} + j] = n0 + j < N ? s[(n0 + j) * groups + g] : 0.0f;
  for (int64_t c = 0; c < chunks; c++) {{
    const int64_t k0 = c * 32, g = k0 / G;
    for (int j = 0; j < 4; j++) {{
      __m512 col[16];
      for (int i = 0; i < 16; i++) {{
        const int64_t n = n0 + 16 * j + i;
        if (n >= N) {{ col[i] = _mm512_setzero_ps(); continue; }}
        __m512i lo, hi;
        if (storage == 0) {{
          const int8_t* v = (const int8_t*)q + n * K + k0;
          lo = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)v));
          hi = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(v + 16)));
        }} else if (storage == 1) {{
          const uint8_t* v = (const uint8_t*)q + n * K + k0;
          lo = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)v));
          hi = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(v + 16)));
        }} else {{  /* a 32-value block: byte j holds value j (low nibble) and j + {h} (high) */
          const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)((const uint8_t*)q + n * (K / 2) + k0 / 2)));
          lo = _mm512_and_si512(bytes, _mm512_set1_epi32(15));
          hi = _mm512_srli_epi32(bytes, 4);
        }}
        const __m512 off = _mm512_set1_ps(z ? z[n * groups + g] : fixed);
        const __m512bh pairs = _mm512_cvtne2ps_pbh(_mm512_sub_ps(_mm512_cvtepi32_ps(hi), off),
                                                   _mm512_sub_ps(_mm512_cvtepi32_ps(lo), off));
        col[i] = (__m512)pairs;  /* dword r: values 2r and 2r + 1 of channel n */
      }}
      lamina_transpose16(col);  /* row r: pair r of each of the 16 channels */
      for (int r = 0; r < 16; r++) _mm512_store_ps((float*)(b + (c * 4 + j) * 512 + r * 32), col[r]);
    }}
  }}
}}
{_tile_loop(3)}{_tile_loop(1)}
void {NAME}(const float* restrict x, const void* restrict q, const float* restrict s, const float* restrict z,
            float* restrict out, int64_t M, int64_t N, int64_t K, int64_t G, int64_t ldc, int64_t storage,
            float offset, int64_t act_int8) {{
  const int64_t terms = act_int8 ? 1 : 3, Mp = (M + 15) / 16 * 16;
  if (K % 32 || G % 32 || syscall(SYS_arch_prctl, 0x1023, 18) != 0) {{
    {FLOAT_NAME}(x, q, s, z, out, M, N, K, G, ldc, storage, offset, act_int8);
    return;
  }}
  /* every buffer at once, so that a failed allocation falls back before any work: x's terms, the rows'
     scales, then per thread a strip's weight pairs and scales, the float accumulators and a tile's store */
  const size_t terms_bytes = (size_t)terms * Mp * K * 2, scales_bytes = (size_t)(Mp * 4 + 63) / 64 * 64;
  const size_t strip_bytes = (size_t)K * {STRIP} * 2, strip_scales = (size_t)(K / G) * {STRIP} * 4;
  const size_t per_thread = strip_bytes + strip_scales + 16 * {STRIP} * 4 + 4 * 256 * 4;
  const int threads = omp_get_max_threads();
  uint8_t* work = (uint8_t*)aligned_alloc(64, terms_bytes + scales_bytes + (size_t)threads * per_thread);
  if (!work) {{
    {FLOAT_NAME}(x, q, s, z, out, M, N, K, G, ldc, storage, offset, act_int8);
    return;
  }}
  uint16_t* xa = (uint16_t*)work;
  float* sx = (float*)(work + terms_bytes);
  if (!lamina_amx_terms(x, xa, sx, M, Mp, K, terms)) {{
    free(work);
    {FLOAT_NAME}(x, q, s, z, out, M, N, K, G, ldc, storage, offset, act_int8);
    return;
  }}
  const int64_t strips = (N + {STRIP - 1}) / {STRIP};
  #pragma omp parallel num_threads(threads)
  {{
    lamina_amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {{ cfg.rows[t] = 16; cfg.colsb[t] = 64; }}
    _tile_loadconfig(&cfg);
    uint8_t* mine = work + terms_bytes + scales_bytes + (size_t)omp_get_thread_num() * per_thread;
    uint16_t* b = (uint16_t*)mine;
    float* st = (float*)(mine + strip_bytes);
    float* acc = (float*)(mine + strip_bytes + strip_scales);
    float* cbuf = acc + 16 * {STRIP};
    #pragma omp for schedule(static)
    for (int64_t t = 0; t < strips; t++) {{
      const int64_t n0 = t * {STRIP}, cols = N - n0 < {STRIP} ? N - n0 : {STRIP};
      lamina_amx_strip(q, s, z, offset, b, st, n0, N, K, G, storage);
      for (int64_t m0 = 0; m0 < M; m0 += 16) {{
        if (act_int8) lamina_amx_block1(xa, b, st, acc, cbuf, Mp, m0, K, G);
        else lamina_amx_block3(xa, b, st, acc, cbuf, Mp, m0, K, G);
        for (int64_t r = 0; r < 16 && m0 + r < M; r++) {{
          const __m512 rs = _mm512_set1_ps(act_int8 ? sx[m0 + r] : 1.0f);
          for (int j = 0; j < 4; j++) {{
            const int64_t left = cols - 16 * j;
            if (left <= 0) break;
            const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            _mm512_mask_storeu_ps(out + (m0 + r) * ldc + n0 + 16 * j, mask,
                                  _mm512_mul_ps(_mm512_load_ps(acc + r * {STRIP} + 16 * j), rs));
          }}
        }}
      }}
    }}
    _tile_release();
  }}
  free(work);
}}
"""
