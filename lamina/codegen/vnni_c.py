"""``qlinear`` with ``act=int8`` for few rows in C with AVX-512 VNNI intrinsics (the C kernel language's
form of ``qlinear_vnni_cpu.py``, which is Numba around LLVM IR).

One function per bit width and scheme; K and the group size are arguments. A call does what
``act=int8`` means (``ir/quant_format.int8_product``) for M rows of x:

1. serially, each row is quantized to int8 with the float32 arithmetic of ``quantize_rows`` (scale
   ``max|x| / 127``, ``x / scale`` rounded half to even, clamped to +-127) and laid out as the dot
   product reads it (``vnni_dot.py``'s layout: per 128-value chunk of a 4-bit row, the low halves
   of its four 32-value blocks, then the high halves); a symmetric format's per-lane offset
   corrections (``-bias * `` the x bytes of each int32 lane) and an asymmetric one's per-group
   sums of x are made in the same pass, into the caller's ``scratch`` (``scratch_bytes``);
2. output channels are split over threads (OpenMP, static), and each channel's packed row is dotted
   with every x row while it is in L1: ``vpdpbusd`` of 64 weight bytes (unsigned: 4-bit nibbles,
   8-bit asym bytes, 8-bit sym bytes with the sign bit flipped) and 64 activation bytes into 16
   int32 lanes, which hold exact integer sums. Per output channel (one scale) the lanes add up over
   the whole row and are reduced in int64; with groups, each group's lanes are converted to float32
   and multiplied by their group's scale (several groups inside a 64-byte chunk take their scales
   through one permute).

The asymmetric zero points' correction ``sum_g scale_g zero_g xsum_g`` and the row's scale are applied
in float64, and the result is rounded to float32 once. On the AMD EPYC of benchmarks/RESULTS.md, one
5632 x 2048 layer streaming from memory, the Numba kernel reads 15-19 GB/s of packed weight and
scales, this one 21-25 (int4 g32); taking two output channels at once measured slower (15 GB/s).
Each chunk prefetches the weight line ``PREFETCH_BYTES`` ahead (and its group scales as many bytes
ahead): on the Intel Xeon of benchmarks/RESULTS.md that took int4 g32 from 15-19 to 19-27 GB/s
(the hardware prefetcher stops at every 4 KB page); on the EPYC it had changed nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from .vnni_dot import LANES, PREFETCH_BYTES, VnniDot

ARGUMENTS = "ppppppiiii"  # x, q, scales, zeros, out, scratch, M, N, K, G (``native_kernels.ARGUMENT_TYPES``)
ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class VnniC(VnniDot):
    """The C VNNI kernel of one weight format (bits and scheme), for an input of ``k`` values: the layout,
    chunks and offsets of ``VnniDot``, one function for every K and group."""

    @property
    def name(self) -> str:
        return f"lamina_vnni_q{self.fmt.bits}_{self.fmt.scheme}"

    def unsupported(self) -> str | None:
        """Why this format and size cannot run on the kernel (None: it can)."""
        why = super().unsupported()
        if why is None and self.group % 4:
            why = f"group {self.group} splits the 4-byte lanes of the dot product"
        return why

    def scratch_bytes(self, rows: int) -> int:
        """Bytes of ``scratch`` for ``rows`` input rows: x bytes, lane offsets, group sums, row scales."""
        groups = self.k // self.group
        return _aligned(rows * self.k) + _aligned(rows * self.chunks * LANES * 4) + _aligned(rows * groups * 8) + rows * 8

    def source(self) -> str:
        """C source of ``name(x, q, s, z, out, scratch, M, N, K, G)``: x float32 [M, K], q the packed
        weight [N, row bytes], s and z float32 [N, K / G] (z read for asym only), out float32 [M, N]."""
        f = self.fmt
        four = f.bits == 4
        sym = f.scheme == "sym"
        bias = self.bias  # read for sym only
        cv = self.chunk_values
        # the weight row streams from memory: each chunk asks for the line PREFETCH_BYTES ahead, past the
        # 4 KB page where the hardware prefetcher stops
        prefetch = f"_mm_prefetch((const char*)(qr + c * 64 + {PREFETCH_BYTES}), _MM_HINT_T0);\n          "
        if four:  # value k's byte: its chunk, then low / high half, then its block, then its place
            position = "k - k % 128 + k % 32 / 16 * 64 + k % 128 / 32 * 16 + k % 16"
            weights = prefetch + """const __m512i w = _mm512_loadu_si512(qr + c * 64);
          t = _mm512_dpbusd_epi32(t, _mm512_and_si512(w, nib), _mm512_loadu_si512(xm + c * 128));
          t = _mm512_dpbusd_epi32(t, _mm512_and_si512(_mm512_srli_epi16(w, 4), nib), _mm512_loadu_si512(xm + c * 128 + 64));"""
            lane_sum = "(int32_t)(int8_t)xr[c * 128 + 4 * l + u] + (int32_t)(int8_t)xr[c * 128 + 64 + 4 * l + u]"
            lane_base = "(l / 4) * 32"
        else:
            position = "k"
            flip = "_mm512_xor_si512(w, sign), " if sym else "w, "
            weights = prefetch + f"""const __m512i w = _mm512_loadu_si512(qr + c * 64);
          t = _mm512_dpbusd_epi32(t, {flip.rstrip(', ')}, _mm512_loadu_si512(xm + c * 64));"""
            lane_sum = "(int32_t)(int8_t)xr[c * 64 + 4 * l + u]"
            lane_base = "4 * l"
        start = "_mm512_loadu_si512(im + c * 16)" if sym else "_mm512_setzero_si512()"
        init = f"""
    for (int64_t c = 0; c < chunks; c++)
      for (int l = 0; l < 16; l++) {{
        int32_t t = 0;
        for (int u = 0; u < 4; u++) t += {lane_sum};
        init[(m * chunks + c) * 16 + l] = -{bias} * t;
      }}""" if sym else ""
        group_sums = f"""
    for (int64_t g = 0; g < groups; g++) {{
      int64_t t = 0;
      for (int64_t k = g * G; k < (g + 1) * G; k++) t += (int8_t)xr[{position}];
      xsum[m * groups + g] = (double)t;
    }}""" if not sym else ""
        correction = """
        double zero_terms = 0.0;
        const double* restrict xg = xsum + m * groups;
        #pragma omp simd reduction(+:zero_terms)
        for (int64_t g = 0; g < groups; g++) zero_terms += (double)sr[g] * (double)zr[g] * xg[g];
        r -= zero_terms;""" if not sym else ""
        return f"""
#include <immintrin.h>
void {self.name}(const float* restrict x, const uint8_t* restrict q, const float* restrict s,
                 const float* restrict z, float* restrict out, uint8_t* restrict scratch,
                 int64_t M, int64_t N, int64_t K, int64_t G) {{
  const int64_t chunks = K / {cv}, groups = K / G, row = {"K / 2" if four else "K"}, per = {cv} / G;
  uint8_t* restrict xb = scratch;
  int32_t* restrict init = (int32_t*)(scratch + (M * K + {ALIGN - 1}) / {ALIGN} * {ALIGN});
  double* restrict xsum = (double*)((uint8_t*)init + (M * chunks * 64 + {ALIGN - 1}) / {ALIGN} * {ALIGN});
  double* restrict sxs = xsum + (M * groups * 8 + {ALIGN - 1}) / {ALIGN} * {ALIGN} / 8;
  (void)xsum; (void)z;
  for (int64_t m = 0; m < M; m++) {{
    const float* restrict xm = x + m * K;
    uint8_t* restrict xr = xb + m * K;
    const float sx = lm_int8_row_scale(xm, K);
    sxs[m] = (double)sx;
    for (int64_t k = 0; k < K; k++) xr[{position}] = (uint8_t)(int8_t)lm_int8_quantize(xm[k], sx);{group_sums}{init}
  }}
  int32_t lane_group[16];
  for (int l = 0; l < 16; l++) lane_group[l] = per > 1 ? ({lane_base}) / (int32_t)G : 0;
  const __m512i idx = _mm512_loadu_si512(lane_group);
  const __m512i nib = _mm512_set1_epi8(0x0F), sign = _mm512_set1_epi8((char)0x80);
  (void)nib; (void)sign;
  const __mmask16 scale_mask = (__mmask16)(per > 1 ? (1u << per) - 1u : 1u);
  #pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {{
    const uint8_t* restrict qr = q + n * row;
    const float* restrict sr = s + n * groups;
    const float* restrict zr = z + n * groups;
    (void)zr;
    for (int64_t m = 0; m < M; m++) {{
      const uint8_t* restrict xm = xb + m * K;
      const int32_t* restrict im = init + m * chunks * 16;
      (void)im;
      double r;
      if (G == K) {{
        __m512i t = _mm512_setzero_si512();
        for (int64_t c = 0; c < chunks; c++) {{
          {"t = _mm512_add_epi32(t, _mm512_loadu_si512(im + c * 16));" if sym else ""}
          {weights}
        }}
        const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(t));
        const __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(t, 1));
        r = (double)_mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi)) * (double)sr[0];
      }} else if (per <= 1) {{
        __m512 a = _mm512_setzero_ps();
        const int64_t span = G / {cv};
        for (int64_t g = 0; g < groups; g++) {{
          __m512i t = _mm512_setzero_si512();
          for (int64_t c = g * span; c < (g + 1) * span; c++) {{
            {"t = _mm512_add_epi32(t, _mm512_loadu_si512(im + c * 16));" if sym else ""}
            {weights}
          }}
          a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(sr[g]), a);
        }}
        r = (double)_mm512_reduce_add_ps(a);
      }} else {{
        __m512 a = _mm512_setzero_ps();
        for (int64_t c = 0; c < chunks; c++) {{
          __m512i t = {start};
          {weights}
          _mm_prefetch((const char*)(sr + c * per + {PREFETCH_BYTES // 4}), _MM_HINT_T0);
          const __m512 sl = _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(scale_mask, sr + c * per));
          a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sl, a);
        }}
        r = (double)_mm512_reduce_add_ps(a);
      }}{correction}
      out[m * N + n] = (float)(r * sxs[m]);
    }}
  }}
}}
"""
