"""A fused attention kernel for the CPU: softmax(q k^T * scale + mask) v, one query row at a time.

The kernel is serial over a range of query rows (b, h, i) and releases the GIL; the cpu
target splits the rows over threads (``runtime/cpu.py``). As a Numba ``prange`` kernel it
took 2.2 s to compile instead of 0.6 s. It takes query rows (b, h, i) in turn and keeps one row of S scores in a
per-thread scratch buffer: dot products with every visible key, max, exp and sum, then
the weighted sum of value rows, scaled by 1/sum. The T x S score matrix never exists in
memory; causal rows stop at key i (torch's top-left alignment), so half of a causal
matrix is never computed. Rows whose keys are all masked give zeros, as torch does. Masked keys
(False, or an added -inf) are not read, nor their value rows (weight exactly 0): a KV cache past its
filled length holds no data (torch's sum reads them, so a NaN there makes its row NaN).

Operands are flat arrays with element strides for the batch, head and row dims (their
last dim is contiguous), so the inner loops over the head dim vectorize and q, k, v can
be strided views of a fused qkv projection without a copy. Grouped-query attention maps
query head h to kv head h // (H // HK).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionVariant:
    """What is fixed in one attention kernel's source."""

    causal: bool
    mask: str | None  # None, "bool" (True = attend) or "add" (added to the scores)
    f32: bool         # float32 (vectorizable exp32) or float64 (math.exp)

    @property
    def name(self) -> str:
        mask = {None: "nomask", "bool": "boolmask", "add": "addmask"}[self.mask]
        return f"k_attention_{'causal' if self.causal else 'full'}_{mask}_{'f32' if self.f32 else 'f64'}"


def attention_source(variant: AttentionVariant) -> str:
    """Numba source of ``variant.name(q, k, v, mask, out, scale, first_row, last_row, H, T, D, HK, S, DV, strides...)``."""
    ft = "np.float32" if variant.f32 else "np.float64"
    exp = "exp32" if variant.f32 else "math.exp"
    visible = "min(i + 1, S)" if variant.causal else "S"
    skip, masking = "", ""
    if variant.mask == "bool":  # a hidden key is not read (nor its value row: its weight is exactly 0)
        skip = ("            if not mask[b * mb + h * mh + i * mt + j * mj]:\n"
                f"                s[j] = {ft}(-np.inf)\n                continue\n")
    elif variant.mask == "add":  # likewise where it adds -inf
        skip = ("            added = mask[b * mb + h * mh + i * mt + j * mj]\n"
                "            if added == -np.inf:\n"
                f"                s[j] = {ft}(-np.inf)\n                continue\n")
        masking = "            d += added\n"
    return f'''
@numba.njit(cache=True, nogil=True, error_model='numpy', boundscheck=False, fastmath={{'reassoc', 'contract'}})
def {variant.name}(q, k, v, mask, out, scale, first, last, H, T, D, HK, S, DV,
        qb, qh, qt, kb, kh, kt, vb, vh, vt, ob, oh, ot, mb, mh, mt, mj):
    prefer_wide_vectors()
    sc = {ft}(scale)
    s = np.empty(S, {ft})
    acc = np.empty(DV, {ft})
    group = H // HK
    for row in range(first, last):
        b = row // (H * T)
        h = (row // T) % H
        i = row % T
        hk = h // group
        n = {visible}
        qo = b * qb + h * qh + i * qt
        m = {ft}(-np.inf)
        for j in range(n):
{skip}            ko = b * kb + hk * kh + j * kt
            d = {ft}(0.0)
            for c in range(D):
                d += q[np.uint64(qo + c)] * k[np.uint64(ko + c)]
            d *= sc
{masking}            s[j] = d
            m = d if d > m or d != d else m  # a NaN score makes the row NaN, as torch
        oo = b * ob + h * oh + i * ot
        if m == -np.inf:  # every key masked: zeros, as torch
            for c in range(DV):
                out[np.uint64(oo + c)] = {ft}(0.0)
            continue
        for j in range(n):
            s[j] = {ft}(0.0) if s[j] == -np.inf else {exp}(s[j] - m)
        total = {ft}(0.0)
        for j in range(n):
            total += s[j]
        for c in range(DV):
            acc[c] = {ft}(0.0)
        for j in range(n):
            p = s[j]
            if p == 0.0:
                continue
            vo = b * vb + hk * vh + j * vt
            for c in range(DV):
                acc[c] += p * v[np.uint64(vo + c)]
        inv = {ft}(1.0) / total
        for c in range(DV):
            out[np.uint64(oo + c)] = acc[c] * inv
'''
