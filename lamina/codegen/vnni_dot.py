"""One output channel's integer dot product with AVX-512 VNNI, as LLVM IR: the inner loop of ``act=int8``.

Numba types ``int8 * int8`` as 64-bit integers, so its vectorized integer loops run 8 lanes of
int64 instead of 64 lanes of bytes; ``vpdpbusd`` (unsigned bytes times signed bytes, four
products summed into each of 16 int32 lanes) is what a quantized GEMV wants. This module
writes that loop in LLVM IR text; ``qlinear_vnni_cpu.py`` links it into a Numba kernel through
an intrinsic, so it is compiled, optimised and cached with the kernel (llvmlite is Numba's own
LLVM).

The loop walks one weight row in chunks of 64 bytes: 128 values for 4-bit (four 32-value blocks,
``ir/quant_format.py``), 64 for 8-bit. ``vpdpbusd`` needs one unsigned operand:

- 4-bit: the nibbles (0..15) times x; the activation row is laid out per chunk as the low halves
  of its four blocks, then the high halves, so the low and the high nibbles of 64 bytes meet their
  x in two plain loads;
- 8-bit asym: the stored bytes (0..255) times x;
- 8-bit sym: the weight with its sign bit flipped (w + 128, unsigned) times x.

A symmetric format's offset (``bias``: 8 or 128) is taken out exactly per lane: each chunk's
accumulator starts from ``init`` = ``-bias * (sum of the x bytes of that lane)``, made once per call
from x alone, so nothing is precomputed from the weight.

Per channel (one scale per row) the int32 lanes accumulate over the whole row and are scaled
once; with groups each chunk's lanes are converted to float and multiplied by their group's
scale (a chunk holds 1, 2 or 4 groups, or lies inside one). The function returns a double:
``sum_g scale_g * dot_g``; the asymmetric zero points' correction is left to the caller. Each chunk
prefetches the bytes ``PREFETCH_BYTES`` ahead (the next rows).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..ir.quant_format import QuantFormat

CHUNK_BYTES = 64
LANES = 16
PREFETCH_BYTES = 4096  # 2048-8192 measured alike within noise; 4096 and 8192 ahead on both int8 and int4
MAX_K_PER_CHANNEL = (1 << 31) // (255 * 128)  # int32 lanes of a per-channel row cannot overflow below this


@dataclass(frozen=True)
class VnniDot:
    """The dot product of one packed row of format ``fmt`` over an input of ``k`` values."""

    fmt: QuantFormat
    k: int

    @property
    def chunk_values(self) -> int:
        return 128 if self.fmt.bits == 4 else 64

    @property
    def chunks(self) -> int:
        return self.k // self.chunk_values

    @property
    def group(self) -> int:
        return self.fmt.group_size(self.k)

    @property
    def per_channel(self) -> bool:
        return self.group == self.k

    @property
    def uses_init(self) -> bool:
        """Whether each chunk starts from the caller's per-lane offsets (the symmetric formats)."""
        return self.fmt.scheme == "sym"

    @property
    def bias(self) -> int:
        """What the unsigned operand adds to each weight: 8 (4-bit sym's stored offset), 128 (8-bit sym's
        flipped sign bit), 0 (asym: the zero points are the caller's)."""
        return 0 if self.fmt.scheme == "asym" else 8 if self.fmt.bits == 4 else 128

    @property
    def name(self) -> str:
        f = self.fmt
        return f"lamina_vnni_q{f.bits}_{f.scheme}_k{self.k}_g{self.group}"

    def unsupported(self) -> str | None:
        """Why this format and size cannot run here (None: it can)."""
        if self.k % self.chunk_values:
            return f"K={self.k} is not a multiple of {self.chunk_values}"
        g, v = self.group, self.chunk_values
        if not (g % v == 0 or v % g == 0):
            return f"group {g} neither divides nor is a multiple of a {v}-value chunk"
        if self.per_channel and self.k > MAX_K_PER_CHANNEL:
            return f"K={self.k} could overflow the per-channel int32 lanes"
        return None

    def source(self) -> str:
        """``double @name(ptr q, ptr x, ptr scales, ptr init)``: q the row's packed bytes, x the row of
        activation bytes (laid out as the module doc says), scales the row's group scales, init int32 [chunks, 16]."""
        nibbles = self.fmt.bits == 4
        dot = "%acc1" if self.per_channel else "%d"  # per channel the chunk's dot is the next accumulator
        x_step = 2 * CHUNK_BYTES if nibbles else CHUNK_BYTES
        signed_weight = self.fmt.bits == 8 and self.fmt.scheme == "sym"
        lines = [
            "loop:",
            "  %c = phi i64 [0, %entry], [%c1, %loop]",
            f"  %acc = phi {self._acc_type()} [zeroinitializer, %entry], [%acc1, %loop]",
            f"  %qo = mul i64 %c, {CHUNK_BYTES}",
            "  %qp = getelementptr i8, ptr %q, i64 %qo",
            f"  %pf = getelementptr i8, ptr %qp, i64 {PREFETCH_BYTES}",
            "  call void @llvm.prefetch.p0(ptr %pf, i32 0, i32 3, i32 1)",
            "  %w = load <64 x i8>, ptr %qp, align 1",
            f"  %xo = mul i64 %c, {x_step}",
            "  %xp = getelementptr i8, ptr %x, i64 %xo",
            "  %x0 = load <16 x i32>, ptr %xp, align 1",
        ]
        start = "zeroinitializer"
        if self.uses_init:
            lines += ["  %io = mul i64 %c, 16", "  %ip = getelementptr i32, ptr %init, i64 %io",
                      "  %i0 = load <16 x i32>, ptr %ip, align 4"]
            start = "%i0"
        if self.per_channel:
            if start != "zeroinitializer":
                lines.append(f"  %a0 = add <16 x i32> %acc, {start}")
                start = "%a0"
            else:
                start = "%acc"
        if nibbles:
            lines += [
                "  %lo = and <64 x i8> %w, splat (i8 15)",
                "  %hi = lshr <64 x i8> %w, splat (i8 4)",
                "  %lo32 = bitcast <64 x i8> %lo to <16 x i32>",
                "  %hi32 = bitcast <64 x i8> %hi to <16 x i32>",
                f"  %xp2 = getelementptr i8, ptr %xp, i64 {CHUNK_BYTES}",
                "  %x1 = load <16 x i32>, ptr %xp2, align 1",
                f"  %d0 = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> {start}, <16 x i32> %lo32, "
                "<16 x i32> %x0)",
                f"  {dot} = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> %d0, <16 x i32> %hi32, "
                "<16 x i32> %x1)",
            ]
        else:
            if signed_weight:  # w + 128 as unsigned bytes (flipping the sign bit); init takes 128 x out
                lines.append("  %wu = xor <64 x i8> %w, splat (i8 -128)")
            lines.append(f"  %w32 = bitcast <64 x i8> {'%wu' if signed_weight else '%w'} to <16 x i32>")
            lines.append(f"  {dot} = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> {start}, "
                         "<16 x i32> %w32, <16 x i32> %x0)")
        if not self.per_channel:
            lines += ["  %df = sitofp <16 x i32> %d to <16 x float>", *self._scale_vector(),
                      "  %acc1 = call <16 x float> @llvm.fma.v16f32(<16 x float> %df, <16 x float> %sv, "
                      "<16 x float> %acc)"]
        lines += ["  %c1 = add i64 %c, 1", f"  %done = icmp eq i64 %c1, {self.chunks}",
                  "  br i1 %done, label %exit, label %loop", "exit:"]
        if self.per_channel:
            lines += ["  %wide = sext <16 x i32> %acc1 to <16 x i64>",
                      "  %sum = call i64 @llvm.vector.reduce.add.v16i64(<16 x i64> %wide)",
                      "  %sumf = sitofp i64 %sum to double",
                      "  %s0 = load float, ptr %s, align 4",
                      "  %s0d = fpext float %s0 to double",
                      "  %r = fmul double %sumf, %s0d"]
        else:
            lines += ["  %rf = call reassoc float @llvm.vector.reduce.fadd.v16f32(float 0.0, <16 x float> %acc1)",
                      "  %r = fpext float %rf to double"]
        lines.append("  ret double %r")
        return "\n".join([
            *DECLARATIONS,
            f"define double @{self.name}(ptr noalias readonly %q, ptr noalias readonly %x, "
            "ptr noalias readonly %s, ptr noalias readonly %init) alwaysinline nounwind {",
            "entry:", "  br label %loop", *lines, "}", ""])

    def _acc_type(self) -> str:
        return "<16 x i32>" if self.per_channel else "<16 x float>"

    def _scale_vector(self) -> list[str]:
        """``%sv``: each lane's group scale for chunk ``%c``."""
        groups_in_chunk = self.chunk_values // self.group if self.group < self.chunk_values else 1
        if groups_in_chunk == 1:
            chunks_per_group = self.group // self.chunk_values
            index = f"  %so = udiv i64 %c, {chunks_per_group}" if chunks_per_group > 1 else "  %so = add i64 %c, 0"
            return [index, "  %sp = getelementptr float, ptr %s, i64 %so", "  %s1 = load float, ptr %sp, align 4",
                    "  %s1v = insertelement <16 x float> poison, float %s1, i64 0",
                    "  %sv = shufflevector <16 x float> %s1v, <16 x float> poison, <16 x i32> zeroinitializer"]
        lanes_per_group = LANES // groups_in_chunk
        mask = ", ".join(f"i32 {lane // lanes_per_group}" for lane in range(LANES))
        vec = f"<{groups_in_chunk} x float>"
        return [f"  %so = mul i64 %c, {groups_in_chunk}", "  %sp = getelementptr float, ptr %s, i64 %so",
                f"  %sg = load {vec}, ptr %sp, align 4",
                f"  %sv = shufflevector {vec} %sg, {vec} poison, <16 x i32> <{mask}>"]


DECLARATIONS = [
    "declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <16 x i32>, <16 x i32>)",
    "declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)",
    "declare float @llvm.vector.reduce.fadd.v16f32(float, <16 x float>)",
    "declare i64 @llvm.vector.reduce.add.v16i64(<16 x i64>)",
    "declare void @llvm.prefetch.p0(ptr, i32, i32, i32)",
]


@functools.cache  # a property of the machine (about 0.1 ms to ask LLVM)
def host_has_vnni() -> bool:
    """Whether this CPU runs ``vpdpbusd`` on 512-bit vectors (AVX-512 BW and VNNI), per LLVM's host query."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features()
    return all(features.get(name, False) for name in ("avx512f", "avx512bw", "avx512vnni"))

