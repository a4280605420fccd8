"""A float32 GEMM in C with AVX-512 for the cpu backend: ``out = x @ w^T (+ b)`` for a ``linear`` whose
weight is fixed for the plan.

On the AMD EPYC of benchmarks/RESULTS.md, torch's float32 GEMM (MKL) runs 60-150 GFLOP/s with two
threads: MKL takes its AVX2 code on AMD CPUs. This kernel is the classic register-blocked one: the
weight is packed once per plan (``pack_weight``: tiles of 32 output channels, each tile [K, 32]
contiguous, the last one padded with zeros; a snapshot kept in step with the weight), and each
6 x 32 block of the output keeps 12 vector accumulators while it walks K, loading two vectors of
the tile and broadcasting one input value per row per step; the last tile stores through a mask.

Blocks are split over OpenMP threads in one of two orders. Where x fits in a core's L2 cache
(``GROUP_BYTES``), each thread takes whole tiles, so the weight is read once. Where it does not (a
CNN's 1 x 1 convolutions, thousands of pixels by 64-300 channels), the tiles go in groups of about
``GROUP_BYTES`` and each thread sweeps its rows over the group, so x is read once per group instead
of once per tile; the same rows fall to the same thread in every group, so the groups need no
barrier. Measured there against ``torch.mm`` (GFLOP/s, one run): 25088 x 96 x 288 173 / 110 (with
tiles only: 92), 25088 x 128 x 128 168 / 120 (137), 6272 x 192 x 192 196 / 118 (183), 64 x 256 x
256 178 / 96, 1576 x 768 x 3072 216 / 146, 512 x 2048 x 5632 191-197 / 115. MKL is fast on Intel
CPUs: there the backend runs this kernel only on the shapes where it measured faster
(``runtime/gemm_choice.py``).

Each step of K also prefetches the tile ``PREFETCH_STEPS`` steps ahead (past a tile's end: the next
tile's start; a prefetch never faults). Inside a model the weights come from L3, not L2 (a 4-layer
transformer's 9 MB of weights pass between two reads of one), and the hardware prefetcher, which
restarts at every 4 KB page, left the 64-row GEMMs at 175-190 GFLOP/s where they run 280 with the
weight in L2. On the Xeon of benchmarks/RESULTS.md, whole models compiled both ways in one process
(median ms): transformers' GPT-2 1 x 64 2.59 -> 2.42, Qwen2 2.14 -> 2.07, Llama 2.17 -> 2.10 (8 steps
ahead gained half as much, 64 and 128 less); GEMMs alone with the weight in cache 0.96-1.12x
(512 x 2048 x 5632 1.04x, 8 x 2048 x 2048 1.12x).

``gemm_source(epilogue=True)`` is the same product with a residual added to the accumulators and a
clamp (ReLU, ReLU6) before they are stored: the kernel after a CNN's 1x1 convolution, done in registers
(``runtime/gemm_epilogue.py``).
"""
from __future__ import annotations

import torch

TILE = 32
ROWS = 6
GROUP_BYTES = 256 * 1024  # packed weight tiles taken together, so that they stay in a core's L2 cache
PREFETCH_STEPS = 32  # steps of K ahead (4 KB of the tile) the block asks the weight for (see the module doc)
ARGUMENTS = "ppppiiii"  # x, packed weight, bias (NULL: none), out, M, N, K, out's row stride (``ARGUMENT_TYPES``)
NAME = "lamina_gemm_f32"
# x, packed weight, bias, residual (NULL: none), out, M, N, K, out's (and the residual's) row stride, clamp bounds
EPILOGUE_ARGUMENTS = "pppppiiiiff"
EPILOGUE_NAME = "lamina_gemm_epilogue_f32"


def pack_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` [N, K] as tiles [ceil(N / 32), K, 32]: tile t, row k, column j is ``w[32 t + j, k]`` (zero
    past N)."""
    n, k = w.shape
    tiles = -(-n // TILE)
    padded = torch.nn.functional.pad(w.detach(), (0, 0, 0, tiles * TILE - n))
    return padded.reshape(tiles, TILE, k).transpose(1, 2).contiguous()


def _block(rows: int, epilogue: bool = False) -> str:
    """The kernel of one block of ``rows`` output rows by one tile (``m0`` its first row); with ``epilogue``,
    a residual block (``rr``, NULL: none) is added to the accumulators and they are clamped to
    [``vmin``, ``vmax``] before the store (max then min with the accumulator second: NaN stays NaN)."""
    init = " ".join(f"__m512 c{r}0 = b0, c{r}1 = b1;" for r in range(rows))
    step = " ".join(f"{{ const __m512 a = _mm512_set1_ps(xr[{r} * K + k]); c{r}0 = _mm512_fmadd_ps(a, w0, c{r}0); "
                    f"c{r}1 = _mm512_fmadd_ps(a, w1, c{r}1); }}" for r in range(rows))
    store = " ".join(f"_mm512_mask_storeu_ps(cr + {r} * ldc, lo, c{r}0); _mm512_mask_storeu_ps(cr + {r} * ldc + 16, hi, "
                     f"c{r}1);" for r in range(rows))
    name, extra, finish = f"lamina_gemm_block{rows}", "", ""
    if epilogue:
        name, extra = f"lamina_gemm_epilogue_block{rows}", ", const float* restrict rr, __m512 vmin, __m512 vmax"
        add = " ".join(f"c{r}0 = _mm512_add_ps(c{r}0, _mm512_maskz_loadu_ps(lo, rr + {r} * ldc)); "
                       f"c{r}1 = _mm512_add_ps(c{r}1, _mm512_maskz_loadu_ps(hi, rr + {r} * ldc + 16));" for r in range(rows))
        clamp = " ".join(f"c{r}{h} = _mm512_min_ps(vmax, _mm512_max_ps(vmin, c{r}{h}));" for r in range(rows) for h in (0, 1))
        finish = f"\n  if (rr) {{ {add} }}\n  {clamp}"
    return f"""static inline void {name}(const float* restrict xr, const float* restrict tile,
    float* restrict cr, __m512 b0, __m512 b1, __mmask16 lo, __mmask16 hi, int64_t ldc, int64_t K{extra}) {{
  {init}
  for (int64_t k = 0; k < K; k++) {{
    _mm_prefetch((const char*)(tile + (k + {PREFETCH_STEPS}) * 32), _MM_HINT_T0);
    _mm_prefetch((const char*)(tile + (k + {PREFETCH_STEPS}) * 32 + 16), _MM_HINT_T0);
    const __m512 w0 = _mm512_loadu_ps(tile + k * 32), w1 = _mm512_loadu_ps(tile + k * 32 + 16);
    {step}
  }}{finish}
  {store}
}}
"""


def block_functions() -> str:
    """The block kernels for 1..``ROWS`` rows, defined once in a translation unit however many sources
    include them (the quantized GEMM of ``qgemm_c.py`` runs them too)."""
    blocks = "".join(_block(r) for r in range(1, ROWS + 1))
    masks = """/* the store masks of a tile with ``left`` output channels from its first on (32 or more: all) */
static inline __mmask16 lamina_gemm_mask_lo(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}
static inline __mmask16 lamina_gemm_mask_hi(int64_t left) {
  return left >= 32 ? (__mmask16)0xFFFF : left > 16 ? (__mmask16)((1u << (left - 16)) - 1u) : 0;
}
"""
    return f"#ifndef LAMINA_GEMM_BLOCKS\n#define LAMINA_GEMM_BLOCKS\n{blocks}{masks}#endif\n"


def gemm_source(epilogue: bool = False) -> str:
    """C source of ``NAME(x, packed, b, out, M, N, K, ldc)``: x [M, K], packed ``pack_weight(w)``, b [N] or
    NULL, out [M, N] with rows ``ldc`` apart (N: contiguous; more: a block of a wider output's columns),
    all float32. With ``epilogue``, ``EPILOGUE_NAME(x, packed, b, r, out, M, N, K, ldc, low, high)``: also
    adds r (out's layout, or NULL) and clamps to [low, high] before each store (``runtime/gemm_epilogue.py``).
    Needs ``cpu_c.PRELUDE`` and AVX-512F."""
    block = "lamina_gemm_epilogue_block" if epilogue else "lamina_gemm_block"
    extra = ", rr, vmin, vmax" if epilogue else ""
    cases = " ".join(f"case {r}: {block}{r}(xr, tile, cr, b0, b1, lo, hi, ldc, K{extra}); break;"
                     for r in range(1, ROWS + 1))
    name, residual, bounds, setup, blocks = NAME, "", "", "", ""
    if epilogue:
        name, residual, bounds = EPILOGUE_NAME, "const float* restrict r, ", ", float low, float high"
        setup = "  const __m512 vmin = _mm512_set1_ps(low), vmax = _mm512_set1_ps(high);\n"
        blocks = "".join(_block(r, epilogue=True) for r in range(1, ROWS + 1))
    row = "      const float* rr = r ? r + m0 * ldc + t * 32 : NULL;\n" if epilogue else ""
    return f"""
#include <immintrin.h>
{block_functions()}{blocks}
void {name}(const float* restrict x, const float* restrict packed, const float* restrict b, {residual}float* restrict out,
            int64_t M, int64_t N, int64_t K, int64_t ldc{bounds}) {{
  const int64_t tiles = (N + 31) / 32, blocks = (M + {ROWS - 1}) / {ROWS};
{setup}  /* x in cache: each thread takes whole tiles, so the weight is read once. Else groups of tiles that stay
     in L2, each swept by the row blocks, so x is read once per group, not once per tile */
  const int rows_outer = M * K * 4 > {GROUP_BYTES};
  const int64_t per_group = !rows_outer ? tiles : K * 32 * 4 >= {GROUP_BYTES} ? 1 : {GROUP_BYTES} / (K * 32 * 4);
  #pragma omp parallel
  for (int64_t t0 = 0; t0 < tiles; t0 += per_group) {{
    const int64_t nt = tiles - t0 < per_group ? tiles - t0 : per_group;
    /* the same rows fall to the same thread in every group (equal counts, static): no barrier needed */
    #pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < blocks * nt; i++) {{
      const int64_t t = t0 + (rows_outer ? i % nt : i / blocks);
      const int64_t m0 = (rows_outer ? i / nt : i % blocks) * {ROWS}, rows = M - m0 < {ROWS} ? M - m0 : {ROWS};
      const int64_t left = N - t * 32;
      const __mmask16 lo = lamina_gemm_mask_lo(left), hi = lamina_gemm_mask_hi(left);
      const __m512 b0 = b ? _mm512_maskz_loadu_ps(lo, b + t * 32) : _mm512_setzero_ps();
      const __m512 b1 = b ? _mm512_maskz_loadu_ps(hi, b + t * 32 + 16) : _mm512_setzero_ps();
      const float* xr = x + m0 * K;
      const float* tile = packed + t * K * 32;
      float* cr = out + m0 * ldc + t * 32;
{row}      switch (rows) {{ {cases} }}
    }}
  }}
}}
"""
