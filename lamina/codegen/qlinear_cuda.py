"""Dequantize-in-the-loop GEMV for NVIDIA GPUs, as CUDA C for ``cupy.RawKernel``.

``out[m, n] = sum_k x[m, k] * w[n, k]`` with ``w`` packed (``ir/quant_format.py``). One warp per
output channel: each lane loads 16 bytes of the packed row at a time (one ``uint4``: 32 4-bit values,
or 16 8-bit ones), unpacks them in registers with shifts and masks, multiplies with x (read as plain
loads: x is small and cached), and the warp sums its lanes with shuffles. The group's scale (and zero
point) is read once per 16-byte chunk; chunks never straddle a group (4-bit groups are multiples of
32 values, and the vector path of 8-bit needs groups and K that are multiples of 16; others take a
scalar path, one value per lane and step). Rows of x run along the grid's y dimension (a grid-stride
loop past 65535). K, the group and the format are constants of the source.
"""
from __future__ import annotations

from ..ir.quant_format import QuantFormat
from .qlinear_cpu import QLinearVariant

WARPS = 4  # output channels per block of 128 threads


def qlinear_cuda_name(v: QLinearVariant) -> str:
    return f"k_qlinear_cuda_q{v.fmt.bits}_{v.fmt.scheme}_k{v.k}_g{v.group}"


def vector_path(fmt: QuantFormat, k: int) -> bool:
    """Whether the packed rows are read as 16-byte vectors (else one value per lane and step)."""
    g = fmt.group_size(k)
    return fmt.bits == 4 or (k % 16 == 0 and g % 16 == 0)


def qlinear_cuda_source(v: QLinearVariant) -> str:
    """CUDA C of ``name(x, q, s, z, out, M, N)``: x float [M, K], q packed rows [N, row bytes], s and z
    float [N, groups] (z unread for sym), out float [M, N]; grid (ceil(N / WARPS), min(M, 65535)),
    block 32 * WARPS."""
    f, k, g = v.fmt, v.k, v.group
    groups = k // g
    row_bytes = k // 2 if f.bits == 4 else k
    offset = "z[n * NG + grp]" if f.scheme == "asym" else f"{float(f.offset)}f"
    signed = f.bits == 8 and f.scheme == "sym"
    if vector_path(f, k):  # a chunk: 16 bytes, holding 32 values (4-bit) or 16 (8-bit)
        values = 32 if f.bits == 4 else 16
        if f.bits == 4:
            term = "((float)(w & 15u) - off) * xc[b] + ((float)(w >> 4) - off) * xc[b + 16]"
        else:
            term = f"((float)({'(signed char)' if signed else ''}w) - off) * xc[b]"
        body = f"""
        for (int c = lane; c < {row_bytes // 16}; c += 32) {{
            const uint4 v = *reinterpret_cast<const uint4*>(qr + (long long)c * 16);
            const int grp = (c * {values}) / G;
            const float sc = s[n * NG + grp];
            const float off = {offset};
            const unsigned int words[4] = {{v.x, v.y, v.z, v.w}};
            const float* xc = xr + (long long)c * {values};
            float part = 0.f;
            #pragma unroll
            for (int b = 0; b < 16; ++b) {{
                const unsigned int w = (words[b >> 2] >> (8 * (b & 3))) & 0xffu;
                part += {term};
            }}
            acc += part * sc;
        }}"""
    else:
        ctype = "signed char" if signed else "unsigned char"
        body = f"""
        for (int i = lane; i < K; i += 32) {{  // one value per lane and step
            const int grp = i / G;
            const float off = {offset};
            acc += ((float)(({ctype})qr[i]) - off) * s[n * NG + grp] * xr[i];
        }}"""
    return f"""
extern "C" __global__ void {qlinear_cuda_name(v)}(const float* __restrict__ x, const unsigned char* __restrict__ q,
        const float* __restrict__ s, const float* __restrict__ z, float* __restrict__ out, long long M, long long N) {{
    const int K = {k};
    const int G = {g};
    const int NG = {groups};
    const int lane = threadIdx.x & 31;
    const long long n = (long long)blockIdx.x * {WARPS} + (threadIdx.x >> 5);
    if (n >= N) return;
    const unsigned char* qr = q + n * {row_bytes};
    for (long long m = blockIdx.y; m < M; m += gridDim.y) {{
        const float* xr = x + m * K;
        float acc = 0.f;{body}
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
        if (lane == 0) out[m * N + n] = acc;
    }}
    (void)NG; (void)G; (void)z;
}}
"""
