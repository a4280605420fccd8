"""A grouped float32 convolution over NHWC images in C with AVX-512 (the cpu backend, AMD CPUs): an implicit GEMM.

RegNet's 3 x 3 convolutions have groups of 64 channels. torch runs them on oneDNN, and lamina could
only call ``convolution.out``, which convolves into a tensor of its own and copies it into the
arena (18% of a RegNet convolution at batch 8). This kernel writes its output in place and
multiplies as the C GEMM does (``gemm_c.py``): each group's weight is packed once per plan
(``pack_weight``: per group, tiles of 32 output channels, each [taps, channels of the group, 32],
the last padded with zeros), and a block of 6 output pixels by one tile keeps 12 vector accumulators
while it walks the taps and, within each, the group's input channels. An output pixel's row of the
implicit GEMM is not one stretch of memory but one per tap: the block reads through a pointer per
pixel and tap (``x`` at the tap's input pixel, channels of the group), or, for a tap in the padding,
to a row of zeros, so the inner loop has no bounds test.

Work is split over OpenMP threads by groups, then row blocks within each: a group's packed weight
(taps x 64 x 64 floats: 147 KB for RegNet) stays in the core's cache while its rows stream past.
"""
from __future__ import annotations

import torch

from .gemm_c import ROWS, TILE, block_functions

NAME = "lamina_conv2d_f32"
# x, packed weight, bias (NULL: none), out; N, H, W, C, OH, OW, CO, KH, KW, SH, SW, PH, PW, DH, DW, groups
ARGUMENTS = "pppp" + "i" * 16


def pack_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``w`` [CO, C / groups, KH, KW] as [groups, tiles, KH * KW, C / groups, 32]: group g, tile t, tap (kh, kw),
    input channel c, column j is ``w[g * CO / groups + 32 t + j, c, kh, kw]`` (zero past the group's channels)."""
    co, cg, kh, kw = w.shape
    per_group = co // groups
    tiles = -(-per_group // TILE)
    grouped = w.detach().reshape(groups, per_group, cg, kh * kw)
    padded = torch.nn.functional.pad(grouped, (0, 0, 0, 0, 0, tiles * TILE - per_group))
    return padded.reshape(groups, tiles, TILE, cg, kh * kw).permute(0, 1, 4, 3, 2).contiguous()


def _block(rows: int) -> str:
    """One block of ``rows`` output pixels by one tile: ``at[r * taps + tap]`` is pixel r's input row for a tap."""
    init = " ".join(f"__m512 c{r}0 = b0, c{r}1 = b1;" for r in range(rows))
    bases = " ".join(f"const float* restrict x{r} = at[{r} * taps + tap];" for r in range(rows))
    step = " ".join(f"{{ const __m512 a = _mm512_set1_ps(x{r}[k]); c{r}0 = _mm512_fmadd_ps(a, w0, c{r}0); "
                    f"c{r}1 = _mm512_fmadd_ps(a, w1, c{r}1); }}" for r in range(rows))
    store = " ".join(f"_mm512_mask_storeu_ps(cr + {r} * ldc, lo, c{r}0); _mm512_mask_storeu_ps(cr + {r} * ldc + 16, hi, "
                     f"c{r}1);" for r in range(rows))
    return f"""static inline void lamina_conv_block{rows}(const float* const* at, const float* restrict tile,
    float* restrict cr, __m512 b0, __m512 b1, __mmask16 lo, __mmask16 hi, int64_t ldc, int64_t taps, int64_t cg) {{
  {init}
  for (int64_t tap = 0; tap < taps; tap++) {{
    {bases}
    const float* restrict wt = tile + tap * cg * 32;
    for (int64_t k = 0; k < cg; k++) {{
      const __m512 w0 = _mm512_loadu_ps(wt + k * 32), w1 = _mm512_loadu_ps(wt + k * 32 + 16);
      {step}
    }}
  }}
  {store}
}}
"""


def conv_source() -> str:
    """C source of ``NAME(x, packed, b, out, N, H, W, C, OH, OW, CO, KH, KW, SH, SW, PH, PW, DH, DW, groups)``:
    x [N, H, W, C], packed ``pack_weight(w, groups)``, b [CO] or NULL, out [N, OH, OW, CO], all float32 and
    contiguous. Needs ``cpu_c.PRELUDE`` and AVX-512F."""
    blocks = "".join(_block(r) for r in range(1, ROWS + 1))
    cases = " ".join(f"case {r}: lamina_conv_block{r}(at, tile, cr, b0, b1, lo, hi, CO, taps, cg); break;"
                     for r in range(1, ROWS + 1))
    return f"""
#include <immintrin.h>
#include <stdlib.h>
{block_functions()}{blocks}
void {NAME}(const float* restrict x, const float* restrict packed, const float* restrict b, float* restrict out,
            int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW, int64_t CO, int64_t KH, int64_t KW,
            int64_t SH, int64_t SW, int64_t PH, int64_t PW, int64_t DH, int64_t DW, int64_t groups) {{
  const int64_t cg = C / groups, per_group = CO / groups, tiles = (per_group + 31) / 32, taps = KH * KW;
  const int64_t M = N * OH * OW, blocks = (M + {ROWS - 1}) / {ROWS};
  #pragma omp parallel
  {{
    float* zeros = (float*)calloc((size_t)cg, sizeof(float));  /* the input row of a tap in the padding */
    const float** at = (const float**)malloc(sizeof(const float*) * (size_t)({ROWS} * taps));
    for (int64_t g = 0; g < groups; g++) {{
      /* the same row blocks fall to the same thread in every group (static): no barrier needed */
      #pragma omp for schedule(static) nowait
      for (int64_t block = 0; block < blocks; block++) {{
        const int64_t m0 = block * {ROWS}, rows = M - m0 < {ROWS} ? M - m0 : {ROWS};
        for (int64_t r = 0; r < rows; r++) {{
          const int64_t m = m0 + r, n = m / (OH * OW), oh = m / OW % OH, ow = m % OW;
          for (int64_t i = 0; i < KH; i++) for (int64_t j = 0; j < KW; j++) {{
            const int64_t ih = oh * SH - PH + i * DH, iw = ow * SW - PW + j * DW;
            at[r * taps + i * KW + j] = ih >= 0 && ih < H && iw >= 0 && iw < W
                ? x + ((n * H + ih) * W + iw) * C + g * cg : zeros;
          }}
        }}
        for (int64_t t = 0; t < tiles; t++) {{
          const int64_t left = per_group - t * 32;
          const __mmask16 lo = lamina_gemm_mask_lo(left), hi = lamina_gemm_mask_hi(left);
          const int64_t c0 = g * per_group + t * 32;
          const __m512 b0 = b ? _mm512_maskz_loadu_ps(lo, b + c0) : _mm512_setzero_ps();
          const __m512 b1 = b ? _mm512_maskz_loadu_ps(hi, b + c0 + 16) : _mm512_setzero_ps();
          const float* tile = packed + (g * tiles + t) * taps * cg * 32;
          float* cr = out + m0 * CO + c0;
          switch (rows) {{ {cases} }}
        }}
      }}
    }}
    free(at);
    free(zeros);
  }}
}}
"""
