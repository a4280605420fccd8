"""The cpu target with C kernels (``kernel_language="c"``): one shared library, called through ctypes.

Plans are the cpu target's (the same wrapper code, arena and library calls); only the fused
kernels differ: C with OpenMP (``codegen/cpu_c.py``) compiled by the system's C compiler into one
library (``runtime/native_kernels.py``) instead of Numba functions. The cpu target's own kernels for
library ops (batch-1 attention, quantized linears) are Numba's under either language, except in a
frozen plan; the GEMV of a ``linear`` over few rows (decoding, ``codegen/gemv_c.py``) and the integer
kernel of an ``act=int8`` ``qlinear`` over few rows (``codegen/vnni_c.py``) are C here, compiled into
the same library. A saved module carries its kernels in this form, so that loading it
needs no Numba.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..codegen.cpu_c import PRELUDE, c_source, param_ctype
from ..codegen.conv_c import ARGUMENTS as CONV_ARGUMENTS
from ..codegen.conv_c import NAME as CONV_NAME
from ..codegen.conv_c import conv_source
from ..codegen.conv_c import pack_weight as pack_conv_weight
from ..codegen.dead_code import drop_dead_lets
from ..codegen.gemm_c import ARGUMENTS as GEMM_ARGUMENTS
from ..codegen.attention_c import ARGUMENTS as ATTENTION_ARGUMENTS
from ..codegen.attention_c import NAME as ATTENTION_NAME
from ..codegen.attention_c import attention_source as attention_c_source
from ..codegen.gemm_c import NAME as GEMM_NAME
from ..codegen.gemm_c import EPILOGUE_ARGUMENTS, EPILOGUE_NAME, gemm_source, pack_weight
from ..codegen.gemv_c import ARGUMENTS as GEMV_ARGUMENTS
from ..codegen.gemv_c import MAX_ROWS as GEMV_ROWS
from ..codegen.gemv_c import gemv_name, gemv_source, needs_scratch
from ..codegen.kernel import Kernel
from ..codegen.qgemm_c import ARGUMENTS as QGEMM_ARGUMENTS
from ..codegen.qgemm_c import NAME as QGEMM_NAME
from ..codegen.qgemm_c import qgemm_source
from ..codegen.qgemm_amx import NAME as AMX_NAME
from ..codegen.qgemm_amx import qgemm_amx_source
from ..codegen.scratch import rows_in_outputs, use_scratch_rows
from ..codegen.shared_kernels import share_structure
from ..codegen.vnni_c import ARGUMENTS as VNNI_ARGUMENTS
from ..codegen.vnni_c import VnniC
from ..codegen.vnni_dot import host_has_vnni
from ..ir.quant_format import QuantFormat
from ..ir.core import Graph, Op
from ..ir.dtypes import DType
from ..ir.ops.window import pair
from ..ir.size_code import Size, is_static
from ..log import logger
from .cpu import CpuTarget, _attention_lines, _parallel, few_rows_lines, guarded, kernel_views
from .gemm_choice import GemmChoice
from .gemm_epilogue import GemmEpilogue, pairs
from .library import call_line
from .frozen import kernel_view
from .native_kernels import NativeFunction, NativeLibrary, argument_kinds, build_library
from .qlinear_call import qlinear_lines
from .qlinear_cpu import QLinearCpu
from .program import CompiledKernel, PlanContext


def _weight_matmul(op: Op) -> bool:
    """A float32 ``matmul`` of rows [..., M, K] by a 2-d [K, N]: a linear layer stored as [in, out]."""
    x, w = op.operands
    return (len(w.type.shape) == 2 and len(x.type.shape) >= 2 and
            all(v.type.dtype == DType.f32 for v in (*op.operands, *op.results)))


def _grouped_conv(op: Op) -> bool:
    """A float32 NHWC ``conv2d`` in groups of at least 16 channels whose packed group weight fits a core's L2
    cache (RegNet's 3 x 3 in groups of 64): lamina's C convolution (``codegen/conv_c.py``) runs it."""
    if op.name != "conv2d" or op.attrs["layout"] != "nhwc" or op.attrs["groups"] < 2:
        return False
    w = op.operands[1].type.shape
    if any(v.type.dtype != DType.f32 for v in (*op.operands, *op.results)) or not all(isinstance(d, int) for d in w):
        return False
    per_group = w[0] // op.attrs["groups"]
    return w[1] >= 16 and w[2] * w[3] * w[1] * -(-per_group // 32) * 32 * 4 <= 512 * 1024


def native_function(kernel: Kernel, parallel: bool | None = None) -> NativeFunction:
    """``kernel`` as a library function, named for its structure and whether it runs in parallel."""
    parallel = _parallel(kernel) if parallel is None else parallel
    name = f"{kernel.name}_{'p' if parallel else 's'}"
    prepared = rows_in_outputs(drop_dead_lets(use_scratch_rows(kernel, fill_in_reduction=True)))
    kinds = argument_kinds(len(kernel.buffers), len(kernel.sizes), {p: param_ctype(p, prepared) for p in kernel.params})
    return NativeFunction(name, kinds, c_source(prepared, name, parallel))


class NativeCpuTarget(CpuTarget):
    """CpuTarget whose fused kernels are C; ``library_bytes`` is the compiled library (what a save stores).

    With ``numba_natives`` the library ops the cpu target runs on kernels of its own (batch-1 attention,
    quantized linears) still do, compiled by Numba on first use; without (a frozen plan, which must
    load without Numba) they run as torch calls. A ``linear`` over few rows runs the C GEMV either way
    (``gemv_c.py``: one function per dtype, added to the library by ``native``)."""

    language = "c"

    def __init__(self, numba_natives: bool = True, gemm: GemmChoice | None = None) -> None:
        super().__init__()
        self.numba_natives = numba_natives
        self.gemm = GemmChoice.for_this_cpu() if gemm is None else gemm  # which float32 linears run the C GEMM
        self.printed: dict[str, NativeFunction] = {}  # each kernel's function, by the source it was printed as
        self.own: dict[str, NativeFunction] = {}  # the library ops' C kernels the plans call, by name
        self.functions: list[NativeFunction] = []
        self.library_bytes: bytes | None = None
        self.library: NativeLibrary | None = None

    def source(self, kernel: Kernel) -> str:
        return native_function(kernel).source

    def compiled_kernels(self, kernels: Sequence[Kernel]) -> list[CompiledKernel]:
        compiled = []
        for k, s in zip(kernels, share_structure(kernels, key=_parallel)):
            f = native_function(s.kernel, _parallel(k))
            self.printed[f.source] = f
            compiled.append(CompiledKernel(s.kernel, f.source, values=s.values))
        return compiled

    def compile(self, kernels: Sequence[CompiledKernel]) -> None:
        """One library for all distinct kernels (compiled by the C compiler now); ``kernels`` are those
        ``compiled_kernels`` made."""
        distinct: dict[str, NativeFunction] = {}
        names = []
        for ck in kernels:
            f = self.printed[ck.source]
            distinct.setdefault(f.name, f)
            names.append(f.name)
        self.functions = list(distinct.values()) + list(self.own.values())
        if not self.functions:
            return
        self.library_bytes = build_library(self.functions, PRELUDE)
        self.library = NativeLibrary.load(self.library_bytes, self.functions)
        for ck, name in zip(kernels, names):
            ck.fn = self.library[name]
        logger("compile").info("%d kernels: %d distinct, compiled as C into %s", len(kernels), len(distinct),
                               self.library.path)

    def native(self, op: Op) -> Callable[[], Any] | None:
        if op.name == "linear":
            return self._gemv(op)
        if _c_attention(op):
            return self._add(ATTENTION_NAME, ATTENTION_ARGUMENTS, attention_c_source)
        if op.name == "matmul" and _weight_matmul(op) and self._gemm_rows(op) > 0:
            return self._add(GEMM_NAME, GEMM_ARGUMENTS, gemm_source)
        if self.gemm.everywhere and _grouped_conv(op):
            return self._add(CONV_NAME, CONV_ARGUMENTS, conv_source)
        if op.name == "qlinear" and self.numba_natives:
            self._vnni(op)
            if self.gemm.available:
                self._add(QGEMM_NAME, QGEMM_ARGUMENTS, qgemm_source)
                if self.gemm.amx:  # its fallback (rows with inf or NaN, shapes the tiles do not cut) is the above
                    self._add(AMX_NAME, QGEMM_ARGUMENTS, qgemm_amx_source)
        return super().native(op) if self.numba_natives else None

    def gemm_epilogues(self, graph: Graph, natives: Mapping[int, Any]) -> dict[int, GemmEpilogue]:
        """The C GEMM with the next kernel's bias, residual and clamp on its accumulators
        (``runtime/gemm_epilogue.py``) for each pair the graph has; its function joins the library."""
        found = {id(pair.fused): pair for pair in pairs(graph, self._gemm_rows) if id(pair.linear) in natives}
        if found:
            self._add(EPILOGUE_NAME, EPILOGUE_ARGUMENTS, lambda: gemm_source(epilogue=True))
        return found

    def epilogue_lines(self, pair: GemmEpilogue, args: Sequence[str], kernel_args: Sequence[str],
                       apart: list[str], plan: PlanContext) -> list[str]:
        packed = self._packed_weight(args[1], plan)
        if packed is None:
            return apart
        (x, *bias), conditions = kernel_views(self, plan, args[:1] + args[2:])
        e = pair.epilogue
        if e.bias is not None:
            bias = [kernel_args[e.bias]]
        residual = kernel_args[e.residual] if e.residual is not None else "None"
        out = kernel_args[len(pair.fused.operands)]
        *lead, k = (plan.size(d) for d in pair.linear.operands[0].type.shape)
        n, rows = plan.size(pair.linear.result.type.shape[-1]), math.prod(lead)
        if not is_static(rows):  # decided per call, as the GEMV or the GEMM is
            limit = [f"{rows} <= {int(pair.most_rows)}"] if math.isfinite(pair.most_rows) else []
            conditions[:0] = [f"{rows} > {GEMV_ROWS[DType.f32]}", *limit]
        line = (f"{plan.static(self.library[EPILOGUE_NAME], 'G')}({x}, {packed}, {bias[0] if bias else 'None'}, "
                f"{residual}, {out}, {rows}, {n}, {k}, {n}, float('{e.low!r}'), float('{e.high!r}'))")
        return guarded([line], conditions, apart)

    def _gemm_rows(self, op: Op) -> float:
        """Up to how many rows float32 ``linear`` or weight ``matmul`` ``op`` runs the C GEMM (``GemmChoice``)."""
        k, n = op.operands[0].type.shape[-1], op.results[0].type.shape[-1]
        return self.gemm.rows_limit(k, n) if is_static(k) and is_static(n) else 0

    def _add(self, name: str, arguments: str, source: Callable[[], str]) -> Callable[[], Any]:
        """Function ``name`` joins the library ``compile`` builds (its source printed once); returns the
        loader a plan calls to look it up there."""
        if name not in self.own:
            self.own[name] = NativeFunction(name, arguments, source())
        return lambda: self.library[name]

    def _vnni(self, op: Op) -> None:
        """The C integer kernel of an ``act=int8`` qlinear, added to the library where this CPU has VNNI
        and the format fits it (else the Numba kernels run it)."""
        kernel = VnniC(QuantFormat.of(op.attrs), op.operands[0].type.shape[-1])
        if op.attrs["act"] == "int8" and host_has_vnni() and kernel.unsupported() is None:
            self._add(kernel.name, VNNI_ARGUMENTS, kernel.source)

    def _gemv(self, op: Op) -> Callable[[], Any] | None:
        """The C GEMV of a ``linear`` whose operands share a dtype it has (else None: torch's linear);
        its function joins the library that ``compile`` builds, and is looked up there when planned."""
        dtype = op.results[0].type.dtype
        if dtype not in GEMV_ROWS or any(v.type.dtype != dtype for v in op.operands):
            return None
        if dtype == DType.f32 and self._gemm_rows(op) > 0:
            self._add(GEMM_NAME, GEMM_ARGUMENTS, gemm_source)
        return self._add(gemv_name(dtype), GEMV_ARGUMENTS, lambda: gemv_source(dtype))

    def native_lines(self, kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                     plan: PlanContext) -> list[str]:
        if op.name == "qlinear":
            def make(fmt: QuantFormat, k: int, n: int, act: str) -> QLinearCpu:
                name = VnniC(fmt, k).name
                native = self.library[name] if self.library is not None and name in self.own else None
                gemm_name = AMX_NAME if AMX_NAME in self.own else QGEMM_NAME
                gemm = self.library[gemm_name] if self.library is not None and gemm_name in self.own else None
                return QLinearCpu(fmt, k, n, self.cache, act, native_vnni=native, native_qgemm=gemm,
                                  amx=gemm_name == AMX_NAME)

            return qlinear_lines(op, list(args), out, plan, make)
        if op.name == "matmul":
            return self._matmul_lines(kernel, op, args, out, plan)
        if op.name == "attention" and _c_attention(op):
            return _attention_lines(self, kernel, op, args, out, plan, pointers=True)
        if op.name == "conv2d":
            return self._conv_lines(kernel, op, args, out, plan)
        if op.name != "linear":
            return super().native_lines(kernel, op, args, out, plan)
        dtype = op.results[0].type.dtype

        def call(fn: str, views: list[str], rows: Size, n: Size, k: Size) -> str:
            x, w, *bias, y = views
            return f"{fn}({x}, {w}, {bias[0] if bias else 'None'}, {y}, {scratch(rows, k)}, {rows}, {n}, {k})"

        def scratch(rows: Size, k: Size) -> str:
            """The 16-bit GEMV's float32 copy of x: one buffer kept by the plan where the sizes are fixed (calls
            take turns), else made per call (a torch.empty and its view: 2 us a call, 29 calls a decode step)."""
            if not needs_scratch(dtype):
                return "None"
            if is_static(rows, k):
                return plan.static(self.view(torch.empty(int(rows) * int(k), dtype=torch.float32)), "S")
            return f"_kernel_view(torch.empty({rows} * {k}, dtype=torch.float32))"

        many_rows = self._gemm_rows(op) if dtype == DType.f32 and GEMM_NAME in self.own else 0
        packed = self._packed_weight(args[1], plan) if many_rows > 0 else None
        gemm = plan.static(self.library[GEMM_NAME], "G") if packed is not None else ""

        def many(views: list[str], rows: Size, n: Size, k: Size) -> str:
            x, _, *bias, y = views
            return f"{gemm}({x}, {packed}, {bias[0] if bias else 'None'}, {y}, {rows}, {n}, {k}, {n})"

        return few_rows_lines(self, kernel, op, args, out, plan, GEMV_ROWS[dtype], call,
                              many if packed is not None else None, many_rows)

    def _matmul_lines(self, kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                      plan: PlanContext) -> list[str]:
        """``x @ w`` with ``w`` [K, N] fixed for the plan (GPT-2's Conv1D) on the C GEMM (its weight packed
        from ``w^T``); torch's matmul when ``w`` is not fixed or x or the output is strided."""
        library = [call_line(op, list(args), [out], [out], plan.derive)]
        packed = self._packed_weight(args[1], plan, ".t()")
        if packed is None:
            return library
        *lead, k = (plan.size(d) for d in op.operands[0].type.shape)
        rows, most = math.prod(lead), self._gemm_rows(op)
        if is_static(rows) and rows > most:
            return library
        (x, y), conditions = kernel_views(self, plan, (args[0], out))
        if not is_static(rows) and math.isfinite(most):
            conditions.insert(0, f"{rows} <= {int(most)}")
        n = plan.size(op.results[0].type.shape[-1])
        line = f"{plan.static(kernel(), 'G')}({x}, {packed}, None, {y}, {rows}, {n}, {k}, {n})"
        return guarded([line], conditions, library)

    def _conv_lines(self, kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                    plan: PlanContext) -> list[str]:
        """A grouped NHWC convolution on lamina's C kernel, its weight packed once per plan; torch's when the
        weight is not fixed for the plan or the image is strided."""
        library = [call_line(op, list(args), [out], [out], plan.derive)]
        at = op.attrs
        packed = self._packed_weight(args[1], plan, f", {at['groups']}", "_pack_conv", rank=4)
        if packed is None:
            return library
        (x, *bias, y), conditions = kernel_views(self, plan, (args[0], *args[2:], out))
        n, h, w, c = (plan.size(d) for d in op.operands[0].type.shape)
        _, oh, ow, co = (plan.size(d) for d in op.results[0].type.shape)
        kh, kw = op.operands[1].type.shape[2:]
        geometry = [*pair("stride", at["stride"]), *pair("padding", at["padding"]), *pair("dilation", at["dilation"])]
        sizes = ", ".join(str(v) for v in (n, h, w, c, oh, ow, co, kh, kw, *geometry, at["groups"]))
        line = f"{plan.static(kernel(), 'G')}({x}, {packed}, {bias[0] if bias else 'None'}, {y}, {sizes})"
        return guarded([line], conditions, library)

    def _packed_weight(self, weight: str, plan: PlanContext, suffix: str = "", call: str = "_pack_gemm",
                       rank: int = 2) -> str | None:
        """A C kernel's view of ``call(weight + suffix)``, a packed copy of a weight of ``rank`` dims (the GEMM's
        [N, K] in tiles, ``gemm_c.pack_weight``; a convolution's, ``conv_c.pack_weight``), made once per plan and
        kept in step with the weight; None when the weight is not fixed for the plan (then torch runs)."""
        tensor = plan.value_of(weight)
        if tensor is None or plan.in_arena(tensor) or tensor.dim() != rank:
            return None
        packed = plan.derive(weight, suffix, call=call)
        value = plan.value_of(packed)
        return None if value is None else plan.static(self.view(value), "H")

    def namespace(self) -> dict[str, Any]:
        return {**super().namespace(), "_pack_gemm": pack_weight, "_pack_conv": pack_conv_weight}

    def view(self, tensor: torch.Tensor) -> Any:
        """The tensor as a C kernel receives it (its data pointer); 16-bit floats as their int16 bits."""
        return kernel_view(tensor)  # what a thawed plan makes too


def _c_attention(op: Op) -> bool:
    """Whether ``op`` is a float32 4-d attention the C row kernel takes (its mask, if any, bool or float32)."""
    if op.name != "attention" or op.results[0].type.rank != 4 or op.results[0].type.dtype is not DType.f32:
        return False
    return len(op.operands) == 3 or op.operands[3].type.dtype in (DType.bool, DType.f32)
