"""The cpu target: kernels as Numba ``@njit(parallel=True)`` functions over flat NumPy views."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..codegen.attention_cpu import AttentionVariant, attention_source
from ..codegen.cache import KernelCache
from ..codegen.dead_code import drop_dead_lets
from ..codegen.parallel_compile import CompileJob, compile_in_workers
from ..codegen.cpu_numba import MODULE_HEADER, PARALLEL_THRESHOLD, numba_source
from ..codegen.gemv16_cpu import MAX_ROWS as GEMV16_ROWS
from ..codegen.gemv16_cpu import PREFIX as GEMV16_TYPES
from ..codegen.gemv16_cpu import Gemv16Variant, gemv16_source
from ..codegen.kernel import Kernel
from ..codegen.scratch import use_scratch_rows
from ..codegen.shared_kernels import share_structure
from ..ir.core import Graph, Op
from ..errors import InputMismatchError
from ..log import logger
from ..ir.dtypes import DType
from ..ir.size_code import Size, is_static
from ..ir.targets import OpTable
from .library import attention_expr, call_line
from .native_kernels import Flat
from .qlinear_call import qlinear_lines
from .qlinear_cpu import QLinearCpu
from .program import BackendError, CompiledKernel, Executor, PlanContext, Target, work

__all__ = ["BackendError", "CpuExecutor", "CpuTarget"]


# Attention with more multiply-adds than this runs as torch's kernel (blocked, multi-threaded), which
# is about 2.7x faster than the row kernel at GPT-2 batch 4; below it (decoding, short prompts) the
# row kernel wins by skipping torch's per-call overhead (about 20 us a call) and output copies.
NATIVE_ATTENTION_WORK = 1 << 18


def flat_strided(t: torch.Tensor, unit_last: bool = True) -> tuple[Any, tuple[int, ...]]:
    """A flat NumPy view from ``t``'s first element over all it touches, and ``t``'s element strides.

    With ``unit_last`` the last dim is made contiguous first if it is not (kernels index it with
    unit stride): that is a copy, so the caller must not keep it past the tensor's next write."""
    if unit_last and t.dim() and t.stride(-1) != 1 and t.shape[-1] > 1:
        t = t.contiguous()
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0
    return t.as_strided((span,), (1,)).numpy(), tuple(t.stride())


def pointer_strided(t: torch.Tensor, unit_last: bool = True) -> tuple[Flat, tuple[int, ...]]:
    """``flat_strided`` for a C kernel: ``t``'s data pointer (a ``Flat``, which keeps a copy alive while the
    caller holds it) and element strides."""
    if _copies(t, unit_last):
        t = t.contiguous()
    return Flat(t), tuple(t.stride())


def _copies(t: torch.Tensor, unit_last: bool) -> bool:
    """Whether ``flat_strided(t, unit_last)`` would read a copy of ``t`` rather than ``t`` itself."""
    return unit_last and t.dim() > 0 and t.stride(-1) != 1 and t.shape[-1] > 1


def cpu_kernel_source(kernel: Kernel, parallel: bool | None = None) -> str:
    """The Numba source the cpu backend runs for ``kernel`` (also what ``lamina dump --kernels`` shows);
    parallel unless its work is small (by default: from its sizes)."""
    if parallel is None:
        parallel = _parallel(kernel)
    return numba_source(drop_dead_lets(use_scratch_rows(kernel)), parallel=parallel)


def _parallel(kernel: Kernel) -> bool:
    """Small kernels run serially: starting threads would cost more than the work."""
    return work(kernel) >= PARALLEL_THRESHOLD


def _attention_kernel(target: "CpuTarget", op: Op) -> Callable[[], Any] | None:
    """Fused attention (``codegen/attention_cpu.py``) for 4-d float32/float64 attention."""
    if op.results[0].type.rank != 4:
        return None
    dtype = op.results[0].type.dtype
    if dtype not in (DType.f32, DType.f64):
        return None
    mask = None if len(op.operands) == 3 else "bool" if op.operands[3].type.dtype is DType.bool else "add"
    variant = AttentionVariant(op.attrs["causal"], mask, dtype is DType.f32)
    return lambda: getattr(target.cache.load(variant.name, MODULE_HEADER + attention_source(variant)), variant.name)


def _attention_lines(target: "CpuTarget", kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                     plan: PlanContext, pointers: bool = False) -> list[str]:
    """q, k, v, mask and out as flat arrays with strides, made once where they are fixed for the plan.
    Which of the row kernel and torch's runs is decided by the sizes: now, or per call when the
    plan is generic in them. With ``pointers`` the kernel is C's (``codegen/attention_c.py``): it takes
    data pointers (``Flat``, ``pointer_strided``) and says itself whether the mask is bool or added."""
    view_of, view_name = (pointer_strided, "pointer_strided") if pointers else (flat_strided, "flat_strided")
    lines: list[str] = []
    b, h, t, d = (plan.size(x) for x in op.operands[0].type.shape)
    hk, s, dv = plan.size(op.operands[1].type.shape[1]), plan.size(op.operands[1].type.shape[2]), \
        plan.size(op.operands[2].type.shape[3])
    pairs = [(plan.size(op.operands[2].type.shape[2]), s), (plan.size(op.operands[1].type.shape[3]), d)]
    if any(is_static(x, y) and x != y for x, y in pairs):
        raise InputMismatchError(f"{op.describe()}: keys {[plan.size(x) for x in op.operands[1].type.shape]} and "
                                 f"values {[plan.size(x) for x in op.operands[2].type.shape]} disagree in length "
                                 "or head size for these inputs")
    scale = op.attrs["scale"] if op.attrs["scale"] is not None else 1.0 / math.sqrt(d) if is_static(d) else None
    rows = b * h * t
    work = rows * s * (d + dv)
    target = plan.value_of(out)
    library = [f"{out}.copy_({attention_expr(op, args)})"]
    if (is_static(work) and work > NATIVE_ATTENTION_WORK) or (target is not None and _copies(target, True)):
        # torch's blocked flash kernel wins (or the output's head dim is strided): copy its result
        return library

    def strided(name: str, suffix: str = "", unit_last: bool = True) -> tuple[str, list[str]]:
        """The flat view and strides of ``name + suffix``: made once when the tensor is fixed for the
        plan and no copy is needed (a copy made now would be stale by the time the kernel reads it:
        an arena buffer is written later, a weight may be updated in place), else on every call."""
        tensor = plan.value_of(name)
        if tensor is not None and (not suffix or is_static(b, h, t, s)):  # the mask's expand may be per call
            view = eval(f"t{suffix}", {"t": tensor})  # noqa: S307 - our own code
            if not _copies(view, unit_last):
                flat, strides = view_of(view, unit_last)
                return plan.static(flat, "N"), [str(x) for x in strides]
        flat, st = plan.fresh("n"), plan.fresh("s")
        lines.append(f"{flat}, {st} = {view_name}({name}{suffix}, {unit_last})")
        return flat, [f"{st}[{i}]" for i in range(4)]

    (fq, sq), (fk, sk), (fv, sv), (fo, so) = (strided(a) for a in (args[0], args[1], args[2], out))
    # the mask is read with all four strides: a mask broadcast along the keys has stride 0 there
    fm, sm = strided(args[3], f".expand({(b, h, t, s)})", unit_last=False) if len(args) == 4 else (fq, ["0"] * 4)
    strides = ", ".join(", ".join(x[:3]) for x in (sq, sk, sv, so))
    fn = plan.static(kernel(), "N")
    scale_code = repr(scale) if scale is not None else f"1.0 / math.sqrt({d})"
    checks = [f"{x} != {y}" for x, y in pairs if not is_static(x, y) and str(x) != str(y)]
    if checks:
        lines[:0] = [f"if {' or '.join(checks)}:",
                     f"    raise InputMismatchError({op.describe() + ': keys and values disagree in length or head size'!r})"]
    if pointers:  # C: causal flag and mask kind (0 none, 1 bool, 2 added), then the rows
        kind = 0 if len(args) == 3 else 1 if op.operands[3].type.dtype is DType.bool else 2
        rows_from = f"{int(op.attrs['causal'])}, {kind}, {rows}"
    else:  # Numba: the first and last row (the variant fixes causality and mask)
        rows_from = f"0, {rows}"
    lines.append(f"{fn}({fq}, {fk}, {fv}, {fm}, {fo}, {scale_code}, {rows_from}, {h}, {t}, {d}, "
                 f"{hk}, {s}, {dv}, {strides}, {', '.join(sm)})")
    if is_static(work):
        return lines
    return [f"if {work} > {NATIVE_ATTENTION_WORK}:", *("    " + x for x in library), "else:",
            *("    " + x for x in lines)]


def _linear16_kernel(target: "CpuTarget", op: Op) -> Callable[[], Any] | None:
    """The 16-bit float GEMV (``codegen/gemv16_cpu.py``) for a bfloat16 / float16 ``linear``."""
    dtype, k = op.results[0].type.dtype, op.operands[1].type.shape[-1]
    if dtype not in GEMV16_TYPES or not isinstance(k, int) or any(v.type.dtype != dtype for v in op.operands):
        return None
    variant = Gemv16Variant(dtype, k, len(op.operands) == 3)
    return lambda: getattr(target.cache.load(variant.name, MODULE_HEADER + gemv16_source(variant)), variant.name)


def _linear16_lines(target: "CpuTarget", kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                    plan: PlanContext) -> list[str]:
    """The Numba GEMV ``fn(x, w, b, out, M, N)`` up to ``GEMV16_ROWS`` rows (no bias: the weight is
    passed in its place, unread)."""
    def call(fn: str, views: list[str], rows: Size, n: Size, k: Size) -> str:
        return f"{fn}({', '.join(views if len(args) == 3 else [*views[:2], views[1], views[2]])}, {rows}, {n})"

    return few_rows_lines(target, kernel, op, args, out, plan, GEMV16_ROWS, call)


GemvCall = Callable[[str, list[str], Size, Size, Size], str]  # (function, views of args and out, M, N, K) -> line


def few_rows_lines(target: "CpuTarget", kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                   plan: PlanContext, max_rows: int, call: GemvCall,
                   many: Callable[[list[str], Size, Size, Size], str] | None = None,
                   many_rows: float = math.inf) -> list[str]:
    """A ``linear`` on a GEMV kernel of the target's up to ``max_rows`` input rows; past that, up to
    ``many_rows`` rows, the line ``many(views, M, N, K)`` gives (a GEMM of the target's); otherwise
    torch's linear, and torch's linear too when a tensor is not contiguous. Decided now when the sizes
    are static, else per call. Tensors fixed for the plan are viewed once (``target.view``), the others
    on every call."""
    library = [call_line(op, list(args), [out], [out], plan.derive)]
    *lead, k = (plan.size(d) for d in op.operands[0].type.shape)
    rows = math.prod(lead)  # SizeCode multiplies into per-call code when a size is symbolic
    static = is_static(rows)
    few = not static or rows <= max_rows
    if many is not None and static and not few and rows > many_rows:
        many = None
    if not few and many is None:
        return library
    views, conditions = kernel_views(target, plan, (*args, out))
    n = plan.size(op.results[0].type.shape[-1])
    gemv = call(plan.static(kernel(), "G"), views, rows, n, k) if few else ""
    if many is None:  # few rows only, or torch's linear
        body = [gemv]
        if not static:
            conditions.insert(0, f"{rows} <= {max_rows}")
    elif static:
        body = [gemv if few else many(views, rows, n, k)]
    else:
        body = [f"if {rows} <= {max_rows}:", f"    {gemv}"]
        if math.isfinite(many_rows):
            body += [f"elif {rows} <= {int(many_rows)}:", f"    {many(views, rows, n, k)}", "else:",
                     *(f"    {line}" for line in library)]
        else:
            body += ["else:", f"    {many(views, rows, n, k)}"]
    return guarded(body, conditions, library)


def kernel_views(target: "CpuTarget", plan: PlanContext, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """A kernel's views of tensors ``names``: made once when a tensor is fixed for the plan and
    contiguous, else per call under a contiguity test (the second list: tests to pass)."""
    views, conditions = [], []
    for name in names:
        tensor = plan.value_of(name)
        if tensor is not None and tensor.is_contiguous():
            views.append(plan.static(target.view(tensor), "H"))
        else:
            views.append(f"_kernel_view({name})")
            conditions.append(f"{name}.is_contiguous()")
    return views, conditions


def guarded(body: list[str], conditions: list[str], otherwise: list[str]) -> list[str]:
    """``body`` where every condition holds, else ``otherwise`` (``body`` alone without conditions)."""
    if not conditions:
        return body
    return [f"if {' and '.join(conditions)}:", *("    " + x for x in body), "else:", *("    " + x for x in otherwise)]


def _qlinear_kernel(target: "CpuTarget", op: Op) -> Callable[[], Any] | None:
    """``qlinear`` (``runtime/qlinear_cpu.py``): its kernels compile on first use, per row count."""
    return lambda: None


def _qlinear_lines(target: "CpuTarget", kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                   plan: PlanContext) -> list[str]:
    return qlinear_lines(op, list(args), out, plan, lambda fmt, k, n, act: QLinearCpu(fmt, k, n, target.cache, act))


@dataclass(frozen=True)
class NativeKernel:
    """A kernel of the cpu target's own for a library op: ``load(target, op)`` gives a loader (or None:
    use the library call), ``lines(...)`` the wrapper lines that run it."""

    load: Callable[["CpuTarget", Op], Callable[[], Any] | None]
    lines: Callable[..., list[str]]


NATIVE: OpTable[NativeKernel] = OpTable("cpu", "native kernel")
NATIVE.register("attention")(NativeKernel(_attention_kernel, _attention_lines))
NATIVE.register("qlinear")(NativeKernel(_qlinear_kernel, _qlinear_lines))
NATIVE.register("linear")(NativeKernel(_linear16_kernel, _linear16_lines))


class CpuTarget(Target):
    name = "cpu"
    device = "cpu"
    split_last = True
    # bfloat16 / float16: stored as 16 bits, computed in float32 (codegen/half_floats.py)
    supported = frozenset({DType.f64, DType.f32, DType.bf16, DType.f16, DType.i64, DType.i32, DType.i8, DType.u8,
                           DType.bool})

    def __init__(self, cache: KernelCache | None = None) -> None:
        self.cache = cache or KernelCache()

    def source(self, kernel: Kernel) -> str:
        return cpu_kernel_source(kernel)

    def compiled_kernels(self, kernels: Sequence[Kernel]) -> list[CompiledKernel]:
        """Kernels equal but for their sizes share one compiled function (``codegen/shared_kernels.py``)."""
        shared = share_structure(kernels, key=_parallel)
        return [CompiledKernel(s.kernel, cpu_kernel_source(s.kernel, _parallel(k)), values=s.values)
                for k, s in zip(kernels, shared)]

    def compile(self, kernels: Sequence[CompiledKernel]) -> None:
        """Load each distinct kernel through the cache; the new ones compile in worker processes
        (``codegen/parallel_compile.py``), the rest on their first call (from Numba's cache)."""
        loaded: dict[str, Any] = {}
        new: list[CompileJob] = []
        for ck in kernels:
            key = f"{ck.kernel.name}_{'s' if 'parallel=False' in ck.source else 'p'}"
            if key not in loaded:
                misses = self.cache.misses
                loaded[key] = getattr(self.cache.load(key, MODULE_HEADER + ck.source), ck.kernel.name)
                if self.cache.misses > misses:
                    new.append(CompileJob(str(self.cache.loaded[key]), f"lamina_kernel_{key}", ck.kernel.name,
                                          _argument_kinds(ck), len(ck.source)))
            ck.fn = loaded[key]
        in_workers = compile_in_workers(new)
        logger("compile").info("%d kernels: %d distinct (%d shared by uses of other sizes), %d new (%d compiled "
                               "in worker processes), %d from the cache", len(kernels), len(loaded),
                               len({ck.kernel.name for ck in kernels if ck.kernel.params}), len(new), in_workers,
                               len(loaded) - len(new))

    def native(self, op: Op) -> Callable[[], Any] | None:
        """The cpu target's own kernels for library ops (``NATIVE``): fused attention, quantized linear."""
        return NATIVE.get(op.name).load(self, op) if op.name in NATIVE else None

    def native_lines(self, kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                     plan: PlanContext) -> list[str]:
        return NATIVE.get(op.name).lines(self, kernel, op, args, out, plan)

    def namespace(self) -> dict[str, Any]:
        return {"flat_strided": flat_strided, "pointer_strided": pointer_strided, "math": math,
                "InputMismatchError": InputMismatchError, "_kernel_view": self.view}

    def view(self, tensor: torch.Tensor) -> Any:
        """A kernel's flat NumPy view of ``tensor`` (``numpy_view``)."""
        return numpy_view(tensor)

    def view_expr(self, name: str) -> str:
        return f"_kernel_view({name}.contiguous())"

    def launch(self, fn: str, args: Sequence[str], kernel: Kernel, outer: Size, inner: Size | None) -> str:
        return f"{fn}({', '.join(args)})"


def numpy_view(tensor: torch.Tensor) -> Any:
    """The flat NumPy view a Numba kernel takes of ``tensor``; 16-bit floats as their int16 bits (NumPy
    has no bfloat16)."""
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)
    return tensor.numpy().reshape(-1)


def _argument_kinds(ck: CompiledKernel) -> tuple[str, ...]:
    """The kernel's arguments as its compile worker types them: the flat buffer views (16-bit floats as
    their int16 bits, see ``view``), the int64 sizes, the parameters' values."""
    arrays = ("int16" if b.dtype in (DType.bf16, DType.f16) else b.dtype.numpy.name for b in ck.kernel.buffers)
    return (*(f"a:{a}" for a in arrays), *("s:int64" for _ in ck.kernel.sizes),
            *(f"s:{'int64' if isinstance(v, int) else type(v).__name__}" for v in ck.values))


def CpuExecutor(graph: Graph, cache: KernelCache | None = None, poison: bool = False) -> Executor:
    """An Executor of ``graph`` on the CPU."""
    return Executor(graph, CpuTarget(cache), poison)
