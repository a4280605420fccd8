"""``qlinear`` on the CPU: a dequantize-in-the-loop kernel for few rows, blocked dequantize + GEMM for many.

Which path runs is decided per call by the number of input rows M (tokens times batch):

- M = 1 (decoding): the one-row kernel of ``codegen/qlinear_cpu.py``, reading the packed weight once;
- 1 < M <= ``KERNEL_ROWS``: its several-row variant, still reading the weight once;
- with ``act=int8``, up to ``KERNEL_ROWS`` rows: on a CPU with AVX-512 VNNI an integer kernel (rows
  quantized and dotted with the packed bytes as integers, for every format whose group fits its
  64-byte chunks): the C one of ``codegen/vnni_c.py`` when the target gives it (``native_vnni``,
  the C kernel language), else Numba's of ``codegen/qlinear_vnni_cpu.py``; elsewhere the rows are quantized and
  the float kernel runs on their values. Past ``KERNEL_ROWS``, 8-bit per-channel symmetric
  weights go to ``torch._int_mm`` (an integer GEMM, about 3.7x torch.mm's float32 speed on the
  project's CPU) unless the AMX GEMM below runs them (1.7x faster than ``torch._int_mm`` on a
  512 x 2048 x 5632 layer), other formats to the blocked path on the quantized rows;
- M > ``KERNEL_ROWS`` (prefill): GEMM-bound. Where the target gives it (``native_qgemm``: the C
  kernel language on CPUs with AVX-512, as for float32 linears), the C GEMM of
  ``codegen/qgemm_c.py`` dequantizes tiles of 32 output channels straight into its packed layout
  and multiplies every row by each, in one OpenMP pool; on CPUs with AMX, ``codegen/qgemm_amx.py``
  multiplies the weight's integers with x in exact bfloat16 terms on AMX tiles instead. Elsewhere the weight is dequantized
  ``DEQUANT_BLOCK_BYTES`` of float at a time (blocks of output channels, one parallel pass of a
  generated kernel into a buffer reused for every block) and each block multiplied with
  torch.mm. Either way the float weight never exists whole.

``QLinearCpu.describe()`` says which; ``lamina dump`` and ``compiled.quantization`` print it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..codegen.cache import KernelCache, content_key
from ..codegen.cpu_numba import MODULE_HEADER
from ..codegen.prefetch import SOURCE as PREFETCH_SOURCE
from ..codegen.qgemm_c import storage
from ..codegen.qlinear_cpu import QLinearVariant, dequantize_source, qlinear_source
from ..codegen.qlinear_vnni_cpu import HEADER as VNNI_HEADER
from ..codegen.qlinear_vnni_cpu import vnni_source
from ..codegen.vnni_c import VnniC
from ..codegen.vnni_dot import VnniDot, host_has_vnni
from ..ir.quant_format import QuantFormat
from .qlinear_call import KERNEL_ROWS, integer_gemm_format, run_by_rows

DEQUANT_BLOCK_BYTES = 4 << 20


def load_kernel(variant: QLinearVariant, cache: KernelCache, dequantize: bool = False) -> Callable[..., None]:
    """The compiled GEMV/GEMM of ``variant`` (or, with ``dequantize``, its dequantizer); the cache key
    carries the source's hash."""
    name = f"{variant.name}_dequantize" if dequantize else variant.name
    source = MODULE_HEADER + PREFETCH_SOURCE + (dequantize_source if dequantize else qlinear_source)(variant)
    module = cache.load(f"{name}_{content_key(source)[:10]}", source)
    return getattr(module, name)


def amx_takes(fmt: QuantFormat, k: int) -> bool:
    """Whether the AMX GEMM (``codegen/qgemm_amx.py``) runs a layer of this format and input size itself
    (else it hands the call to the float32 one); where it does, it also beats ``torch._int_mm`` on the
    8-bit per-channel rows of ``act=int8`` (1.7x on a 512 x 2048 x 5632 layer, benchmarks/RESULTS.md)."""
    return k % 32 == 0 and fmt.group_size(k) % 32 == 0


def describe(fmt: QuantFormat, k: int, act: str, integer_kernels: bool | None = None, language: str = "numba",
             c_gemm: bool = False, amx: bool = False) -> str:
    """Which kernels a layer of this format, input size and ``act`` runs on the cpu backend (for reports);
    ``language``: the integer kernel's, ``c`` or ``numba``; ``c_gemm``: whether many rows run the C GEMM,
    ``amx``: its AMX form."""
    on_tiles = c_gemm and amx and amx_takes(fmt, k)
    tiles = "C GEMM on AMX bfloat16 tiles" if on_tiles else "C GEMM dequantizing 32-channel tiles"
    blocked = tiles if c_gemm else "blocked dequantize + torch.mm"
    if act != "int8":
        return f"numba dequantize-in-the-loop kernel for up to {KERNEL_ROWS} rows, else {blocked}"
    dot = VnniDot(fmt, k)
    why_not = dot.unsupported() or ("" if host_has_vnni() else "no AVX-512 VNNI on this CPU")
    if integer_kernels is not None and not integer_kernels and not why_not:
        why_not = "integer kernels off"
    few = (f"numba dequantize-in-the-loop kernel on int8-quantized rows ({why_not})" if why_not else
           "integer dot products (AVX-512 VNNI, C)" if language == "c" and VnniC(fmt, k).unsupported() is None else
           "integer dot products (AVX-512 VNNI, LLVM IR in numba)")
    many = ("torch._int_mm" if integer_gemm_format(fmt, k) and not on_tiles else f"{blocked} on int8-quantized rows")
    return f"{few} for up to {KERNEL_ROWS} rows, else {many}"


@dataclass
class QLinearCpu:
    """``out = x @ dequantize(qweight, scales, zeros)^T`` for one layer's format and sizes."""

    fmt: QuantFormat
    k: int
    n: int
    cache: KernelCache
    act: str = "none"
    integer_kernels: bool = field(default_factory=host_has_vnni)  # act=int8's VNNI kernel where it can run
    native_vnni: Callable[..., None] | None = None  # the C VNNI kernel of this format (``codegen/vnni_c.py``)
    native_qgemm: Callable[..., None] | None = None  # the C quantized GEMM for many rows (``codegen/qgemm_c.py``)
    amx: bool = False  # whether ``native_qgemm`` is its AMX form (``codegen/qgemm_amx.py``)
    kernels: dict[str, Callable[..., None]] = field(default_factory=dict)
    views: dict = field(default_factory=dict)
    blocks: int = field(init=False)       # the kernels' view of a row: blocks of values / of bytes
    block_values: int = field(init=False)
    block_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        v = QLinearVariant(self.fmt, self.k, True)
        self.blocks, self.block_values, self.block_bytes = v.blocks, v.block_values, v.block_bytes
        self.dot = VnniDot(self.fmt, self.k)
        self.integer_kernels = self.integer_kernels and self.act == "int8" and self.dot.unsupported() is None
        self.vnni_c = VnniC(self.fmt, self.k)
        if not self.integer_kernels or self.vnni_c.unsupported() is not None:
            self.native_vnni = None

    def kernel(self, kind: str) -> Callable[..., None]:
        """``gemv``, ``gemm`` or ``dequantize``, compiled on first use (a prefill-only plan never needs the GEMV)."""
        if kind not in self.kernels:
            if kind == "vnni":
                source = MODULE_HEADER + VNNI_HEADER + vnni_source(self.dot)
                module = self.cache.load(f"{self.dot.name}_{content_key(source)[:10]}", source)
                self.kernels[kind] = getattr(module, self.dot.name)
            else:
                variant = QLinearVariant(self.fmt, self.k, kind == "gemv")
                self.kernels[kind] = load_kernel(variant, self.cache, dequantize=kind == "dequantize")
        return self.kernels[kind]

    def describe(self) -> str:
        return describe(self.fmt, self.k, self.act, self.integer_kernels, "c" if self.native_vnni else "numba",
                        self.native_qgemm is not None, self.amx)

    def __call__(self, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                 out: torch.Tensor) -> None:
        def few(x2: torch.Tensor, out2: torch.Tensor) -> None:
            rows = x2.shape[0]
            self.kernel("gemv" if rows == 1 else "gemm")(
                x2.numpy().reshape(rows, self.blocks, self.block_values), *self.weight_views(qweight, scales, zeros),
                out2.numpy(), rows, self.n)

        def int8_many(xq: torch.Tensor, sx: torch.Tensor, out2: torch.Tensor) -> None:
            # the integer GEMM (AMX/VNNI through oneDNN where the CPU has them)
            torch.mul(torch._int_mm(xq, qweight.t()).to(torch.float32), sx * scales.reshape(1, -1), out=out2)

        def blocked(x2: torch.Tensor, out2: torch.Tensor) -> None:
            self.blocked(x2, qweight, scales, zeros, out2)

        def int8_few(x2: torch.Tensor, out2: torch.Tensor) -> None:
            rows = x2.shape[0]
            if self.native_vnni is not None and all(t is None or t.is_contiguous() for t in (qweight, scales, zeros)):
                scratch = torch.empty(self.vnni_c.scratch_bytes(rows), dtype=torch.uint8)
                self.native_vnni(x2.data_ptr(), qweight.data_ptr(), scales.data_ptr(),
                                 (zeros if zeros is not None else scales).data_ptr(), out2.data_ptr(),
                                 scratch.data_ptr(), rows, self.n, self.k, self.fmt.group_size(self.k))
                return
            _, q, s, z = self.weight_views(qweight, scales, zeros)
            self.kernel("vnni")(x2.numpy(), q.reshape(self.n, -1), s, z, out2.numpy(), rows, self.n)

        def qgemm(x2: torch.Tensor, out2: torch.Tensor) -> None:
            self.qgemm(x2, qweight, scales, zeros, out2, act_int8=False)

        def int8_qgemm(x2: torch.Tensor, out2: torch.Tensor) -> None:
            self.qgemm(x2, qweight, scales, zeros, out2, act_int8=True)

        native = self.native_qgemm is not None and all(t is None or t.is_contiguous() for t in (qweight, scales, zeros))
        run_by_rows(x, out, self.k, self.n, self.act, few, qgemm if native else blocked,
                    int8_few if self.integer_kernels else None,
                    int8_many if integer_gemm_format(self.fmt, self.k)
                    and not (native and self.amx and amx_takes(self.fmt, self.k)) else None,
                    int8_qgemm if native else None)

    def weight_views(self, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None) -> tuple:
        """The kernels' NumPy views of a layer's packed weight (as blocks and flat), scales and zero points;
        made once per weight tensor (a plan's packed weights keep their memory when repacked in place)."""
        key = (qweight.data_ptr(), scales.data_ptr(), zeros.data_ptr() if zeros is not None else 0)
        views = self.views.get(key)
        if views is None:
            packed = qweight.numpy()
            views = (packed.reshape(self.n, self.blocks, self.block_bytes), packed.reshape(-1), scales.numpy(),
                     (zeros if zeros is not None else scales).numpy())
            self.views = {key: views}  # one layer's weights at a time: a new tensor replaces the old views
        return views

    def qgemm(self, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
              out: torch.Tensor, act_int8: bool) -> None:
        """``out = x @ dequantize(...)^T`` on the C quantized GEMM (x, out and the weight contiguous), the rows
        of x quantized first with ``act_int8``."""
        self.native_qgemm(x.data_ptr(), qweight.data_ptr(), scales.data_ptr(),
                          zeros.data_ptr() if zeros is not None else None, out.data_ptr(), x.shape[0], self.n,
                          self.k, self.fmt.group_size(self.k), self.n, storage(self.fmt), float(self.fmt.offset),
                          int(act_int8))

    def blocked(self, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                out: torch.Tensor) -> None:
        """``out = x @ dequantize(...)^T`` for many rows, a block of output channels at a time."""
        step = max(1, DEQUANT_BLOCK_BYTES // (4 * self.k))
        block = torch.empty(min(step, self.n), self.k)
        dequantize = self.kernel("dequantize")
        packed = qweight.numpy().reshape(self.n, self.blocks, self.block_bytes)
        z = (zeros if zeros is not None else scales).numpy()
        s = scales.numpy()
        for lo in range(0, self.n, step):
            hi = min(self.n, lo + step)
            w = block[:hi - lo]
            dequantize(packed[lo:hi], s[lo:hi], z[lo:hi], w.numpy().reshape(hi - lo, self.blocks, self.block_values),
                        hi - lo)
            out[:, lo:hi] = torch.mm(x, w.t())
