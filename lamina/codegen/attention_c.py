"""The row attention kernel in C for the CPU: softmax(q k^T * scale + mask) v in float32, a query row at a time.

The same algorithm as ``attention_cpu.py``'s Numba kernel (which float64 and Numba-only builds keep): per
query row (b, h, i), the dot products with every visible key into a scratch row, the max, ``lm_exp32``
of each score less the max, their sum, then the weighted sum of value rows scaled by 1/sum. Causal rows
stop at key i (top-left alignment); a row whose keys are all masked gives zeros, and a NaN score makes
its row NaN, as torch's. Grouped-query attention maps query head h to kv head h // (H // HK).

Why C: decoding runs this on a handful of rows per layer, where the work is a few microseconds and the
call is the cost. A ctypes call with data pointers takes about 2 us; the Numba kernel's dispatch and the
NumPy views it needs per call took 15-25 us a layer (benchmarks/RESULTS.md). Rows are split over threads
only where the work pays for starting them.

Keys a mask hides (False, or an added -inf) are not read, nor are their value rows: their weight is exactly 0.
A KV cache preallocated past its filled length relies on it, since what lies there is not data (torch's
sum reads those rows too, so a NaN there makes its row NaN). The Numba kernel does the same.

Operands are data pointers with element strides for the batch, head and row dims (their last dim
contiguous); the mask (``mask_kind`` 0: none, 1: bool, True = attend, 2: float32 added to the scores) is
read with four strides, so a mask broadcast over the batch, heads or rows has stride 0 there.
"""
from __future__ import annotations

NAME = "lamina_attention_f32"
# q, k, v, mask, out (pointers); scale; causal, mask kind, rows, H, T, D, HK, S, DV; 12 strides of q, k, v,
# out (batch, head, row); 4 of the mask (``native_kernels.ARGUMENT_TYPES``)
ARGUMENTS = "ppppp" + "d" + "i" * 9 + "i" * 12 + "i" * 4
PARALLEL_WORK = 1 << 16  # multiply-adds from which the rows are split over threads
STACK_SCORES = 2048  # keys a row's scores hold on the stack (more: a heap buffer per thread)


def attention_source() -> str:
    """C source of ``lamina_attention_f32`` (needs ``cpu_c.PRELUDE``: ``lm_exp32``)."""
    return rf"""
#include <omp.h>

static void lm_attention_rows(const float* restrict q, const float* restrict k, const float* restrict v,
        const void* restrict mask, float* restrict out, float sc, int64_t causal, int64_t mask_kind,
        int64_t first, int64_t last, int64_t H, int64_t T, int64_t D, int64_t HK, int64_t S, int64_t DV,
        int64_t qb, int64_t qh, int64_t qt, int64_t kb, int64_t kh, int64_t kt,
        int64_t vb, int64_t vh, int64_t vt, int64_t ob, int64_t oh, int64_t ot,
        int64_t mb, int64_t mh, int64_t mt, int64_t mj, float* restrict s, float* restrict acc) {{
  const int64_t group = H / HK;
  const unsigned char* keep = (const unsigned char*)mask;
  const float* add = (const float*)mask;
  for (int64_t row = first; row < last; row++) {{
    const int64_t b = row / (H * T), h = (row / T) % H, i = row % T, hk = h / group;
    const int64_t n = causal ? (i + 1 < S ? i + 1 : S) : S;
    const float* qr = q + b * qb + h * qh + i * qt;
    float m = -INFINITY;
    for (int64_t j = 0; j < n; j++) {{
      const int64_t at = b * mb + h * mh + i * mt + j * mj;
      const float added = mask_kind == 2 ? add[at] : 0.0f;
      if ((mask_kind == 1 && !keep[at]) || added == -INFINITY) {{ s[j] = -INFINITY; continue; }}  /* not read */
      const float* kr = k + b * kb + hk * kh + j * kt;
      float d = 0.0f;
      #pragma omp simd reduction(+:d)
      for (int64_t c = 0; c < D; c++) d += qr[c] * kr[c];
      d *= sc;
      d += added;
      s[j] = d;
      m = (d > m || d != d) ? d : m;  /* a NaN score makes the row NaN, as torch */
    }}
    float* orow = out + b * ob + h * oh + i * ot;
    if (m == -INFINITY) {{  /* every key masked: zeros, as torch */
      for (int64_t c = 0; c < DV; c++) orow[c] = 0.0f;
      continue;
    }}
    /* a score of -inf (masked) weighs exactly 0, and its value row is not read */
    for (int64_t j = 0; j < n; j++) s[j] = s[j] == -INFINITY ? 0.0f : lm_exp32(s[j] - m);
    float total = 0.0f;
    for (int64_t j = 0; j < n; j++) total += s[j];
    for (int64_t c = 0; c < DV; c++) acc[c] = 0.0f;
    for (int64_t j = 0; j < n; j++) {{
      const float p = s[j];
      if (p == 0.0f) continue;
      const float* vr = v + b * vb + hk * vh + j * vt;
      #pragma omp simd
      for (int64_t c = 0; c < DV; c++) acc[c] += p * vr[c];
    }}
    const float inv = 1.0f / total;
    for (int64_t c = 0; c < DV; c++) orow[c] = acc[c] * inv;
  }}
}}

void {NAME}(const float* restrict q, const float* restrict k, const float* restrict v,
        const void* restrict mask, float* restrict out, double scale, int64_t causal, int64_t mask_kind,
        int64_t rows, int64_t H, int64_t T, int64_t D, int64_t HK, int64_t S, int64_t DV,
        int64_t qb, int64_t qh, int64_t qt, int64_t kb, int64_t kh, int64_t kt,
        int64_t vb, int64_t vh, int64_t vt, int64_t ob, int64_t oh, int64_t ot,
        int64_t mb, int64_t mh, int64_t mt, int64_t mj) {{
  const float sc = (float)scale;
  if (rows * S * (D + DV) < {PARALLEL_WORK} || rows < 2) {{  /* decoding: no thread team to start */
    float stack_scores[{STACK_SCORES}], stack_acc[{STACK_SCORES}];
    float* s = S <= {STACK_SCORES} ? stack_scores : (float*)malloc(sizeof(float) * S);
    float* acc = DV <= {STACK_SCORES} ? stack_acc : (float*)malloc(sizeof(float) * DV);
    lm_attention_rows(q, k, v, mask, out, sc, causal, mask_kind, 0, rows, H, T, D, HK, S, DV, qb, qh, qt,
                      kb, kh, kt, vb, vh, vt, ob, oh, ot, mb, mh, mt, mj, s, acc);
    if (s != stack_scores) free(s);
    if (acc != stack_acc) free(acc);
    return;
  }}
  #pragma omp parallel
  {{
    float* s = (float*)malloc(sizeof(float) * (S > 0 ? S : 1));
    float* acc = (float*)malloc(sizeof(float) * (DV > 0 ? DV : 1));
    const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t first = rows * me / threads, last = rows * (me + 1) / threads;
    lm_attention_rows(q, k, v, mask, out, sc, causal, mask_kind, first, last, H, T, D, HK, S, DV, qb, qh, qt,
                      kb, kh, kt, vb, vh, vt, ob, oh, ot, mb, mh, mt, mj, s, acc);
    free(s);
    free(acc);
  }}
}}
"""
