"""A Program: generated kernels for fused regions, torch library calls, one static arena.

A plan is built once per graph: every intermediate gets a place in an arena
(``passes.memory``), weights and arena buffers get their kernel-side views once (zero-copy:
NumPy on the CPU, CuPy through DLPack on the GPU), and a Python wrapper is generated that
launches the kernels and library calls in order. The plan is generic in the graph's size
symbols: the wrapper computes shapes and launch sizes from each call's sizes with plain
integer arithmetic (``ir/size_code.py``), and values whose size changes per call live in a
``GrowingArena``, so a decode loop with a new length per token reuses one plan. Only a graph
whose sizes have no Python form gets a plan per set of sizes (an LRU of ``max_plans``).
A ``Target`` (``cpu.py``, ``cuda.py``) supplies kernel source, compilation, device and launch syntax.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch

from ..codegen.kernel import Const, Kernel
from ..codegen.lower import lower_kernels
from ..ir import quant_format
from ..ir.core import Graph, Op, Param, Value, producers, region_graph, users
from ..ir.dtypes import DType, to_torch
from ..ir.errors import LaminaError
from ..ir.binder import ShapeBinder
from ..ir.shapes import evaluate, fixed_sizes, numel
from ..ir.size_code import NotPrintable, Size, SizeCode, is_static, nondecreasing, python_code, size_tuple, size_variable
from ..ir.ops import REGISTRY, category, lookup
from ..passes.memory import Lifetime, MemoryPlan, plan_memory
from .gemm_epilogue import GemmEpilogue, runs_the_gemm
from .growing_arena import GrowingArena
from .kernel_errors import check_assumption, check_assumptions, raise_kernel_errors
from .library import call_line, hoisted_when_static, view_expr, writes_into_out
from . import collectives  # registers the collective ops' library calls
from .collectives import collective_kind
from .timeline import Event
from .traffic import bytes_read
from .snapshot import Snapshot, refresh_all, version_of

class BackendError(LaminaError, RuntimeError):
    """The backend cannot run this graph (an unsupported dtype, a missing device)."""


@dataclass
class CompiledKernel:
    """A kernel of the plan, its source, its compiled function, and the values this use passes for
    ``kernel.params`` (a kernel shared by uses of other sizes: codegen/shared_kernels.py)."""

    kernel: Kernel
    source: str
    fn: Any = None
    values: tuple[Any, ...] = ()


class PlanContext:
    """What a Target may ask of the plan being built: static tensors by wrapper name, new globals."""

    def value_of(self, name: str) -> Any | None:
        """The tensor a wrapper name stands for when it is fixed for the plan (weights, arena views), else None."""
        raise NotImplementedError

    def static(self, value: Any, prefix: str) -> str:
        """A new wrapper global holding ``value``."""
        raise NotImplementedError

    def fresh(self, prefix: str) -> str:
        """A new local name for the wrapper."""
        raise NotImplementedError

    def size(self, d: Any) -> Size:
        """A dim (int or size expression): an int when the plan fixes it, else the ``SizeCode`` the
        wrapper computes it with per call (see ``ir/size_code.py``)."""
        raise NotImplementedError


class Target:
    """What a device contributes to a Program (see cpu.CpuTarget, cuda.CudaTarget)."""

    name = "target"
    device = "cpu"
    split_last = False  # lower pointwise kernels as rows x last dim (see lower_region)
    supported: frozenset[DType] = frozenset()

    def source(self, kernel: Kernel) -> str:
        raise NotImplementedError

    def compiled_kernels(self, kernels: Sequence[Kernel]) -> list[CompiledKernel]:
        """The kernels with their sources, ready for ``compile`` (a target may share one kernel
        among uses that differ only in sizes)."""
        return [CompiledKernel(k, self.source(k)) for k in kernels]

    def compile(self, kernels: Sequence[CompiledKernel]) -> None:
        """Set ``fn`` of each kernel (identical sources compile once)."""
        raise NotImplementedError

    def view(self, tensor: torch.Tensor) -> Any:
        """The flat, zero-copy kernel-side view of a contiguous tensor."""
        raise NotImplementedError

    def view_expr(self, name: str) -> str:
        """Wrapper code making that view of a per-call tensor ``name``."""
        raise NotImplementedError

    def launch(self, fn: str, args: Sequence[str], kernel: Kernel, outer: Size, inner: Size | None) -> str:
        """The wrapper line launching ``fn``; ``outer``/``inner`` may be per-call ``SizeCode``s."""
        raise NotImplementedError

    def namespace(self) -> dict[str, Any]:
        return {}

    def native(self, op: Op) -> Callable[[], Any] | None:
        """A loader of a kernel of this target's own for a library op (fused attention on the CPU), or None.
        The loader compiles on first use: a plan may choose the library call instead."""
        return None

    def native_lines(self, kernel: Callable[[], Any], op: Op, args: Sequence[str], out: str,
                     plan: PlanContext) -> list[str]:
        """Wrapper lines computing ``op`` on torch tensors ``args`` into ``out`` (with ``kernel()``, or not)."""
        raise NotImplementedError


    def prologue(self) -> list[str]:
        """Wrapper lines run before the first launch (e.g. joining the caller's CUDA stream)."""
        return []

    def gemm_epilogues(self, graph: Graph, natives: Mapping[int, Any]) -> dict[int, GemmEpilogue]:
        """Linears whose GEMM does the next fused kernel's work on its accumulators
        (``runtime/gemm_epilogue.py``), by the fused op's id; a target without such a GEMM has none."""
        return {}

    def epilogue_lines(self, pair: GemmEpilogue, args: Sequence[str], kernel_args: Sequence[str],
                       apart: list[str], plan: PlanContext) -> list[str]:
        """Wrapper lines computing ``pair``'s linear (operands ``args``) and its kernel (its buffers' views
        ``kernel_args``: operands, then the result) in one call; ``apart``, the two calls one after the other."""
        return apart


@dataclass
class Plan:
    """The program of a graph (for all sizes, or for one set when ``generic`` is false): wrapper
    source ``run(inputs, sizes)``, its globals, memory figures."""

    source: str
    run: Any
    memory: MemoryPlan
    launches: int
    arena: torch.Tensor | None = None
    poison_views: list = field(default_factory=list)
    growing: GrowingArena | None = None
    generic: bool = True

    @property
    def arena_bytes(self) -> int:
        static = 0 if self.arena is None else self.arena.numel() * self.arena.element_size()
        return static + (self.growing.bytes if self.growing is not None else 0)


@dataclass(frozen=True)
class PlanCacheInfo:
    """An executor's plans: how many are kept (at most ``limit``, least recently used evicted), how
    many were built in all, the bytes their arenas hold, and how often the arenas of values whose size
    changes per call grew (``arena_grows``, each a re-layout, not a new plan)."""

    plans: int
    limit: int
    builds: int
    arena_bytes: int
    arena_grows: int = 0


def profiler_running() -> bool:
    """Whether a torch profiler is recording: torch's Python flag, which every ``torch.profiler`` and
    ``torch.autograd.profiler`` context sets ("for fast python checks"); its C++ query cost 5.5 us per
    call right after a large kernel (cold caches, a Xeon), the flag a module attribute's read."""
    flag = getattr(torch.autograd.profiler, "_is_profiler_enabled", None)
    return torch.autograd._profiler_enabled() if flag is None else flag


MAX_PLANS = 8  # plans kept per executor, for graphs that need one per set of sizes
SIZE_NAME = re.compile(r"\bsz_\w")  # a size variable in wrapper code (ir/size_code.size_variable)
log = logging.getLogger("lamina.plan")


class Executor:
    """Runs a fused graph on a Target with one plan for all input sizes (or, for a graph whose sizes
    have no Python form, a plan per set of sizes: the ``max_plans`` most recently used ones);
    ``cache_info()`` reports them.

    Calls from several threads take turns (one lock per executor): a plan's arena, error slots and
    weight snapshots are shared state, and the kernels already use every core. Each call returns
    tensors of its own."""

    def __init__(self, graph: Graph, target: Target, poison: bool = False, max_plans: int = MAX_PLANS) -> None:
        if max_plans < 1:
            raise ValueError(f"max_plans must be at least 1, got {max_plans}")
        _check_lowered(graph, target)
        self.graph = graph
        self.target = target
        self.poison = poison
        self.binder = ShapeBinder([v.type for v in graph.inputs])
        self.generic = True  # one plan for all sizes, until a size without a Python form says otherwise
        self._check_dtypes()
        self.hoisted_ops = _hoisted(graph)  # computed once per plan: no kernel
        lowered = [(op, k) for op, k in lower_kernels(graph, target.split_last, nested=False)
                   if id(op) not in self.hoisted_ops]
        self.kernels = {id(op): ck for (op, _), ck in zip(lowered, target.compiled_kernels([k for _, k in lowered]))}
        self.natives = {id(op): fn for op in graph.ops if (fn := target.native(op)) is not None}
        self.epilogues = {i: pair for i, pair in target.gemm_epilogues(graph, self.natives).items()
                          if id(pair.linear) not in self.hoisted_ops}
        # a loop body or a routed layer runs as a program of its own, called once per iteration / call
        self.loops = {id(op): Executor(_body_program(op, graph), target, poison)
                      for op in graph.ops if lookup(op.name).program_regions}
        self.timeline: list[Any] | None = None  # when a list, plans time every step into it (CompiledModule.profile)
        self.record_functions = False  # plans name every step to torch.profiler (while it records)
        self.link: Any = None  # a collectives.SlowLink: collectives take as long as over that link (benchmarks)
        self.iterations: list[int] = []  # iteration counts of the last call's iterate ops, in order
        self.residuals: list[float] = []  # and the residual each loop ended with (its last update's norm)
        self.updates: dict[int, int] = {}  # graph input -> the output that is its new value (see update_in_place)
        self.plans: OrderedDict[tuple, Plan] = OrderedDict()  # least recently used first
        self.max_plans, self.plan_builds = max_plans, 0
        self.hoisted: dict[tuple, list[Snapshot]] = {}  # their values (stacked weights), shared by all plans
        self.lock = threading.Lock()
        target.compile(list(self.kernels.values()))

    def _check_dtypes(self) -> None:
        for op in self.graph.walk():
            for v in op.results:
                if v.type.dtype not in self.target.supported:
                    raise BackendError(f"the {self.target.name} backend does not support {v.type.dtype} "
                                       f"({op.describe()}); use backend='reference' for f16/bf16/i4 models")

    def update_in_place(self, updates: Mapping[int, int]) -> None:
        """The model updates graph input ``i`` in place and output ``updates[i]`` is its new value (a
        static KV cache's ``index_copy_``). A plan may then write the update into the input itself, where
        nothing reads the old value afterwards and the inputs do not share memory (checked per call);
        that output is then the input tensor, so the caller's copy back is a no-op."""
        with self.lock:
            self.updates = dict(updates)
            self.plans.clear()

    def forget_plans(self) -> None:
        """Drop every plan (and the weights' snapshots): the next call plans with the weights it is
        given. For a caller whose weights are new tensors (dynamo passes a replaced Parameter)."""
        with self.lock:
            self.plans.clear()
            self.hoisted.clear()
            for body in self.loops.values():  # routed layers hold the weights too
                body.forget_plans()

    def sources(self) -> dict[str, str]:
        return {ck.kernel.name: ck.source for ck in self.kernels.values()}

    def __call__(self, inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        with self.lock:
            if profiler_running() != self.record_functions:  # torch.profiler started or stopped
                self.record_functions = not self.record_functions
                self.plans.clear()
            sizes = self.binder([x.shape for x in inputs])
            plan = self._plan(sizes, weights)
            if self.poison:
                for view in plan.poison_views:
                    view.fill_(math.nan if view.dtype.is_floating_point else -7)
            return plan.run(inputs, sizes)

    def plan_for(self, inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> Plan:
        with self.lock:
            return self._plan(self.binder([x.shape for x in inputs]), weights)

    def _plan(self, sizes: tuple[int, ...], weights: Mapping[str, torch.Tensor]) -> Plan:
        """The plan for calls with these size-symbol values, built if needed; beyond ``max_plans``
        the least recently used plan is dropped (with its arena). Called under the lock."""
        key = () if self.generic else sizes
        plan = self.plans.get(key)
        if plan is None:
            plan = self.build_plan(sizes, weights)
            key = () if plan.generic else sizes
            self.plans[key] = plan
            self.plan_builds += 1
            while len(self.plans) > self.max_plans:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        return plan

    def cache_info(self) -> PlanCacheInfo:
        with self.lock:
            plans = list(self.plans.values())
            grows = sum(p.growing.grows for p in plans if p.growing is not None)
            return PlanCacheInfo(len(plans), self.max_plans, self.plan_builds, sum(p.arena_bytes for p in plans), grows)

    def build_plan(self, sizes: tuple[int, ...], weights: Mapping[str, torch.Tensor]) -> Plan:
        """A plan generic in the size symbols when their expressions print as Python, else one for ``sizes``."""
        if self.generic and self.binder.symbols:
            try:
                return _PlanBuilder(self, None, weights).build()
            except NotPrintable as e:
                log.info("%s: a plan per set of sizes (%s)", self.graph.name, e)
                self.generic = False
        return _PlanBuilder(self, sizes, weights).build()


def _body_program(op: Op, graph: Graph) -> Graph:
    """The program of a loop body or routed layer. A routed layer's arguments that are the graph's weights
    are its program's weights (same keys): its plan holds them as the outer one does, not per call."""
    body = region_graph(op.regions[0])
    if op.name != "route":
        return body
    keys = {p.value: p.key for p in graph.params}
    outer = op.operands[1:]
    params = tuple(Param(keys[v], a) for v, a in zip(outer, body.inputs) if v in keys)
    inputs = tuple(a for v, a in zip(outer, body.inputs) if v not in keys)
    return body.replace(inputs=inputs, params=params)


def _check_lowered(graph: Graph, target: Target) -> None:
    """A kernel backend runs lowered graphs: every kernel op inside a ``fused`` region, no ``newton``
    left (``lamina.compile`` appends the lowering steps; see ``passes.manager.backend_pipeline``)."""
    for op in graph.ops:
        if op.regions and not lookup(op.name).program_regions and op.name != "fused":
            raise BackendError(f"the {target.name} backend runs lowered graphs, and {op.describe()} is not lowered: "
                               "run newton-expand after newton (lamina.compile adds it to the pipeline)")
    for op in graph.ops:
        if category(op.name).in_kernel:
            raise BackendError(f"the {target.name} backend runs lowered graphs, and {op.describe()} is outside "
                               "a kernel: run the wrap pass last (lamina.compile adds it to the pipeline)")


def work(kernel: Kernel) -> float:
    """Elements a kernel touches, when static; symbolic sizes count as large."""
    total = 1.0
    for e in (kernel.outer, kernel.row_extent):
        if e is None:
            continue
        if not isinstance(e, Const):
            return math.inf
        total *= e.value
    return total


def _evaluate_expr(e: Any, bound: Mapping[sympy.Symbol, int]) -> int:
    """The value of a kernel size expression under the bound size symbols."""
    from ..codegen.kernel import Call, Var

    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, Var):
        return next(v for k, v in bound.items() if str(k) == e.name)
    assert isinstance(e, Call)
    a, b = (_evaluate_expr(x, bound) for x in e.args)
    return {"add": a + b, "mul": a * b, "floordiv": a // b, "mod": a % b, "sub": a - b}[e.op]


class _LineResults:
    """A generated wrapper line assigning several results, run in ``scope`` once per change of its
    ``sources`` (their version counters): the snapshots of its results share one run."""

    def __init__(self, line: str, scope: dict[str, Any], sources: Sequence[torch.Tensor]) -> None:
        self.line, self.scope, self.sources = line, scope, tuple(sources)
        self.versions: list[int] | None = None

    def result(self, name: str) -> Any:
        versions = [version_of(s) for s in self.sources]
        if versions != self.versions:
            exec(self.line, self.scope)  # noqa: S102 - our own generated code
            self.versions = versions
        return self.scope[name]


def _in_consumer_order(shape: tuple[Size, ...], users: Sequence[Op]) -> str:
    """The view suffix of a flat buffer as ``shape``; when a value's only reader permutes it, its
    memory is laid out in the permuted order, so the permute (and a reshape after it) stay views
    instead of copies."""
    if len(users) == 1 and users[0].name == "permute":
        dims = tuple(users[0].attrs["dims"])
        inverse = tuple(int(i) for i in np.argsort(dims))
        return f".view({tuple(shape[d] for d in dims)}).permute({inverse})"
    return f".view({tuple(shape)})"


def _poison(v: Value) -> str:
    """The code of the value a poisoned buffer of ``v`` is filled with: NaN, or -7 for integers."""
    return "float('nan')" if v.type.dtype.is_float else "-7"


def distinct_inputs(inputs: Sequence[torch.Tensor]) -> bool:
    """Whether no two inputs share memory (then an input may be updated in place)."""
    return len({x.untyped_storage().data_ptr() for x in inputs}) == len(inputs)


def _hoisted(g: Graph) -> set[int]:
    """Ops computed once per plan whose operands are weights, constants or views of them: library ops
    that ask for it (``LibraryCall.hoisted_when_static``: stacked and quantized weights) and fused
    kernels of static shape (a relative position bias gathered from its table, a mask made from
    ``arange``), which run in the interpreter instead of being compiled."""
    static = {id(p.value) for p in g.params}
    hoisted: set[int] = set()
    for op in g.ops:
        if not all(id(v) in static for v in op.operands):
            continue
        if hoisted_when_static(op.name) or _static_fused(op):
            hoisted.add(id(op))
        elif not category(op.name).free:
            continue
        static.update(id(r) for r in op.results)
    return hoisted


def _static_fused(op: Op) -> bool:
    """A fused kernel the interpreter can compute without the call's sizes: every shape and attribute
    in it is a number (an ``arange`` from a position symbol is not, even when its length is)."""
    return op.name == "fused" and fixed_sizes(op)


def _fused_evaluator(op: Op, device: str) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``op`` (a fused kernel) computed by the interpreter from torch tensors, as tensors on ``device``."""
    from ..ir.interpreter import Interpreter
    from .compiled import to_numpy

    def evaluate(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = Interpreter({}).run_op(op, [to_numpy(a) for a in args])
        return tuple(torch.from_numpy(np.array(a, copy=True)).to(device=device, dtype=to_torch(v.type.dtype))
                     for a, v in zip(outs, op.results))

    return evaluate


class _PlanBuilder(PlanContext):
    """Builds one Plan. ``sizes`` None: generic in the size symbols (the wrapper computes every size
    from its ``sizes`` argument); else the symbols' values, specialised into the plan."""

    def __init__(self, ex: Executor, sizes: tuple[int, ...] | None, weights: Mapping[str, torch.Tensor]) -> None:
        g = ex.graph
        self.ex, self.g = ex, g
        self.generic = sizes is None
        self.bindings = dict(zip(ex.binder.symbols, sizes or ()))
        self.sizes: dict[Any, Size] = {}    # dim -> its int or per-call code (memo)
        self.glb: dict[str, Any] = {"torch": torch, "np": np, "check_assumption": check_assumption,
                                    "quant_format": quant_format, "_device": ex.target.device,
                                    "collectives": collectives, "_link": ex.link,
                                    **ex.target.namespace()}
        self.device = ex.target.device
        self.lines: list[str] = []
        self.arena_lines: list[str] = []    # per-call views of the growing arena, made first
        self.name: dict[int, str] = {}
        self.dynamic: set[int] = set()      # values that change per call
        self.flat: dict[int, str] = {}      # value -> name of its flat numpy view
        self.counter = 0
        self.weights = weights
        self.param_values = {p.value for p in g.params}
        self.error_slots: list[tuple[str, str]] = []  # (kernel error buffer, its checks) in launch order
        self.snapshots: list[Snapshot] = []  # copies of weights, refreshed when a weight changes in place
        self.arena: torch.Tensor | None = None
        self.growing: GrowingArena | None = None
        self.owned: set[int] = set()        # values a library call made this call: returned as they are
        self.in_place: dict[int, int] = {}  # index_put op -> the graph input it may update in place
        self.readers: dict[Value, list[Op]] = {}  # of the graph's values (set by build)
        self.producer: dict[Value, Op] = {}
        self.pairs: dict[int, GemmEpilogue] = {}  # linear and fused ops run as one call (set by build)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def size(self, d: Any) -> Size:
        if isinstance(d, int):
            return d
        if d not in self.sizes:
            if not self.generic:
                self.sizes[d] = evaluate(d, self.bindings)
            else:
                d = sympy.sympify(d)
                self.sizes[d] = int(d) if d.is_Integer else SizeCode(python_code(d, size_variable))
        return self.sizes[d]

    def shape(self, v: Value) -> tuple[Size, ...]:
        return tuple(self.size(d) for d in v.type.shape)

    def static(self, value: Any, prefix: str) -> str:
        name = self.fresh(prefix)
        self.glb[name] = value
        return name

    def value_of(self, name: str) -> Any | None:
        return self.glb.get(name)

    def derive(self, base: str, suffix: str, call: str = "") -> str:
        """``call(base + suffix)`` (``call`` a function of the namespace, or none) computed once when
        ``base`` is static: a view that shares its memory, or, of a weight, a copy kept in step with it
        (a ``Snapshot``: a transposed, channels-last or packed weight)."""
        expr = f"{call}({base}{suffix})" if call else f"{base}{suffix}"
        if base not in self.glb or SIZE_NAME.search(suffix):
            return expr
        tensor = self.glb[base]
        view = eval(expr, self.glb)  # noqa: S307 - our own generated code
        if view.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
            if self.in_arena(tensor):
                return expr  # kernels write the arena: a copy made now would be stale
            view = self.snapshot([tensor], lambda: eval(expr, self.glb), made=view)  # noqa: S307
        return self.static(view, "D")

    def snapshot(self, sources: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor],
                 made: torch.Tensor | None = None) -> torch.Tensor:
        """A copy of weights kept in step with them (see ``runtime/snapshot.py``); ``made``: its first
        value when the caller has computed it already."""
        snap = Snapshot.of(sources, compute) if made is None else Snapshot(tuple(sources), made, compute)
        self.snapshots.append(snap)
        return snap.target

    def in_arena(self, tensor: torch.Tensor) -> bool:
        return self.arena is not None and tensor.untyped_storage().data_ptr() == self.arena.untyped_storage().data_ptr()

    def flat_of(self, v: Value) -> str:
        if id(v) not in self.flat:
            base = self.name[id(v)]
            tensor = self.glb.get(base) if id(v) not in self.dynamic else None
            if tensor is None or (not tensor.is_contiguous() and self.in_arena(tensor)):
                # per call: kernels write the arena, and a copy made now would not see it
                name = self.fresh("f")
                self.lines.append(f"{name} = {self.ex.target.view_expr(base)}")
            else:
                if not tensor.is_contiguous():  # a strided weight (channels-last, a transpose): a kept copy
                    tensor = self.snapshot([tensor], tensor.contiguous)
                name = self.static(self.ex.target.view(tensor), "F")
            self.flat[id(v)] = name
        return self.flat[id(v)]

    def build(self) -> Plan:
        """Plan the arenas, bind every value to a name, then emit and compile the wrapper."""
        steps = list(self.g.ops)
        self.readers, self.producer = users(steps), producers(steps)
        self.in_place = self.in_place_updates(steps)
        self.pairs = self.paired_epilogues()
        memory, fixed, growing = self.plan_arena(steps)
        poison = self.place_in_arena(memory, fixed)
        self.place_in_growing_arena(growing)
        self.bind_inputs_and_weights()
        source, launches = self.emit_wrapper(steps)
        namespace = dict(self.glb)
        exec(compile(source, f"<lamina wrapper {self.g.name}>", "exec"), namespace)
        generic = self.generic or not self.ex.binder.symbols
        return Plan(source, namespace["run"], memory, launches, self.arena, poison, self.growing, generic)

    # -- arena planning ---------------------------------------------------------------------------
    def plan_arena(self, steps: Sequence[Op]) -> tuple[MemoryPlan, list[Value], list[tuple[Value, int, int]]]:
        """Places for the results kernels and GEMMs write that are not graph outputs: each lives from
        its step to its last use (a view keeps its base alive; an output that views an intermediate
        keeps it to the end, where it is copied out). Values of fixed size get offsets in the static
        arena now; those whose size changes per call are returned with their spans, for the growing arena."""
        outputs = set(self.g.outputs)
        last_use: dict[Value, int] = {}
        for i, op in enumerate(steps):
            for v in op.operands:
                last_use[v] = i
        view_base: dict[Value, Value] = {}
        for op in steps:
            if category(op.name).free and op.operands:
                for r in op.results:
                    view_base[r] = view_base.get(op.operands[0], op.operands[0])
        for i, op in enumerate(steps):
            for v in op.operands:
                if v in view_base:
                    last_use[view_base[v]] = max(last_use.get(view_base[v], 0), i)
        for v in self.g.outputs:
            if v in view_base:
                last_use[view_base[v]] = len(steps)
        at = {id(op): i for i, op in enumerate(steps)}
        for pair in {id(p): p for p in self.pairs.values()}.values():  # the linear's operands (and what they
            for v in pair.linear.operands:  # view) live until the pair is done: the GEMM writes the kernel's
                for u in (v, view_base.get(v)):  # result while it still reads them
                    if u is not None:
                        last_use[u] = max(last_use.get(u, 0), at[id(pair.fused)])
        placed = [(v, i, last_use.get(v, i)) for i, op in enumerate(steps) if self.writes_into_out(op)
                  for v in op.results if v not in outputs]
        fixed, growing = [], []
        for item in placed:
            (fixed if is_static(*self.shape(item[0])) else growing).append(item)
        lifetimes = [Lifetime(str(id(v)), self.nbytes(v), i, end) for v, i, end in fixed]
        return plan_memory(lifetimes), [v for v, _, _ in fixed], growing

    def place_in_arena(self, memory: MemoryPlan, values: Sequence[Value]) -> list[torch.Tensor]:
        """Allocate the static arena and name each planned value's view of it; the views (to poison)."""
        self.arena = arena = torch.empty(max(memory.peak, 1), dtype=torch.uint8, device=self.device)
        views = []
        for v in values:
            off = memory.offsets[str(id(v))]
            raw = arena[off: off + self.nbytes(v)].view(to_torch(v.type.dtype))
            t = eval(f"raw{self.layout(v)}", {"raw": raw})  # noqa: S307 - our own generated code
            self.name[id(v)] = self.static(t, "A")
            views.append(t)
        return views

    def place_in_growing_arena(self, placed: Sequence[tuple[Value, int, int]]) -> None:
        """Values whose size changes per call: a ``GrowingArena`` laid out for a capacity of each size,
        and wrapper lines that view it per call (poisoned per call when asked)."""
        if not placed:
            return
        sizes = [self.nbytes_expr(v) for v, _, _ in placed]
        codes = [python_code(n, size_variable) for n in sizes]
        scope: dict[str, Any] = {}
        exec(f"def nbytes(sizes):\n    {size_tuple(self.ex.binder.symbols)}= sizes\n    return ({''.join(c + ', ' for c in codes)})\n", scope)  # noqa: S102
        self.growing = GrowingArena(scope["nbytes"], [(start, end) for _, start, end in placed], self.device,
                                    all(nondecreasing(n) for n in sizes))
        self.glb["_growing"] = self.growing
        self.arena_lines.append("_dyn, _off = _growing.fit(sizes)")
        for k, ((v, _, _), code) in enumerate(zip(placed, codes)):
            name = self.fresh("a")
            self.arena_lines.append(f"{name} = _dyn[_off[{k}]:_off[{k}] + {code}]"
                                    f".view({to_torch(v.type.dtype)}){self.layout(v)}")
            if self.ex.poison:
                self.arena_lines.append(f"{name}.fill_({_poison(v)})")
            self.name[id(v)] = name
            self.dynamic.add(id(v))

    def layout(self, v: Value) -> str:
        """The view suffix giving an arena buffer ``v``'s shape: native kernels take strided outputs (laid
        out in their reader's order, see ``_in_consumer_order``); kernels and GEMMs write contiguous ones."""
        if id(self.producer[v]) in self.ex.natives:
            return _in_consumer_order(self.shape(v), self.readers.get(v, []))
        return f".view({self.shape(v)})"

    def bind_inputs_and_weights(self) -> None:
        for i, v in enumerate(self.g.inputs):
            self.name[id(v)] = f"x{i}"
            self.dynamic.add(id(v))
        for p in self.g.params:  # the weights themselves (views see in-place updates); a copy only across devices
            weight = self.weights[p.key].detach()
            if weight.device.type != self.device:
                weight = self.snapshot([weight], lambda w=weight: w.to(self.device))
            self.name[id(p.value)] = self.static(weight, "W")

    # -- wrapper emission -------------------------------------------------------------------------
    def emit_wrapper(self, steps: Sequence[Op]) -> tuple[str, int]:
        """The wrapper's source ``run(inputs, sizes)`` and its number of launches."""
        symbols = self.ex.binder.symbols if self.generic else ()
        self.lines = self.ex.target.prologue() + [f"x{i} = inputs[{i}]" for i in range(len(self.g.inputs))]
        if symbols:
            self.lines.append(f"{size_tuple(symbols)}= sizes")
        self.lines += self.arena_lines
        snapshots_at = len(self.lines)  # where the refresh goes, once every snapshot is known
        if self.ex.loops:
            self.glb["_iterations"], self.glb["_residuals"] = self.ex.iterations, self.ex.residuals
            self.lines += ["_iterations.clear()", "_residuals.clear()"]
        fresh_outputs = self.allocate_outputs(steps)
        timed = self.ex.timeline is not None or self.ex.record_functions
        launches = sum(self.timed_step(op) for op in steps) if timed else sum(self.step(op) for op in steps)
        if self.snapshots:
            self.glb["_snapshots"], self.glb["refresh_all"] = self.snapshots, refresh_all
            self.lines.insert(snapshots_at, "refresh_all(_snapshots)")
        if self.error_slots:  # kernels that found a bad index or a division by zero
            self.glb["raise_kernel_errors"] = raise_kernel_errors
            flags = " or ".join(f"{e}[0]" for e, _ in self.error_slots)
            slots = ", ".join(f"({e}, {c})" for e, c in self.error_slots)
            self.lines.append(f"if {flags}:")
            self.lines.append(f"    raise_kernel_errors([{slots}])")
        returns, given = [], set()
        updates = set(self.ex.updates.values())
        # an input "updated" to itself (a skipped layer leaving its cache unwritten) is returned as it is
        unchanged = {out for inp, out in self.ex.updates.items() if self.g.outputs[out] is self.g.inputs[inp]}
        for i, v in enumerate(self.g.outputs):
            if i in unchanged:
                returns.append(self.name[id(v)])
                continue
            # a fresh tensor is returned once as it is; an arena view or a weight, or a second
            # user-visible occurrence, is copied (an input's new value may alias the output it also is)
            own = (v in fresh_outputs or id(v) in self.owned) and (id(v) not in given or i in updates)
            returns.append(self.name[id(v)] if own else f"{self.name[id(v)]}.clone()")
            given.add(id(v))
        self.lines.append(f"return [{', '.join(returns)}]")
        return "def run(inputs, sizes):\n" + "\n".join("    " + line for line in self.lines) + "\n", launches

    def allocate_outputs(self, steps: Sequence[Op]) -> set[Value]:
        """Outputs written by a kernel or GEMM get a fresh tensor per call (the caller keeps it)."""
        written = {v for op in steps if self.writes_into_out(op) for v in op.results}
        fresh = set()
        for v in self.g.outputs:
            if v in written and v not in fresh:
                name = self.fresh("y")
                self.lines.append(f"{name} = torch.empty({self.shape(v)}, dtype={to_torch(v.type.dtype)}, "
                                  f"device={self.device!r})")
                if self.ex.poison:  # unwritten elements show as NaN / -7
                    self.lines.append(f"{name}.fill_({_poison(v)})")
                self.name[id(v)] = name
                self.dynamic.add(id(v))
                fresh.add(v)
        return fresh

    def loop(self, op: Op, args: list[str]) -> int:
        """``iterate``: call the body's program until its residual is under tol (see the op's doc)."""
        n, body = op.attrs["carried"], self.static(self.ex.loops[id(op)], "L")
        carried, out, k = self.fresh("c"), self.fresh("o"), self.fresh("k")
        self.lines += [f"{carried} = [{', '.join(args[:n])}]",
                       f"for {k} in range({op.attrs['max_iters']}):",
                       f"    {out} = {body}({carried} + [{', '.join(args[n:])}], {{}})",
                       f"    {carried} = {out}[:{n}]",
                       f"    if float({out}[{n}]) < {op.attrs['tol']!r}:",
                       "        break",
                       f"_iterations.append({k} + 1)",
                       f"_residuals.append(float({out}[{n}]))"]
        for i, v in enumerate(op.results[:-1]):
            self.name[id(v)] = f"{carried}[{i}]"
            self.dynamic.add(id(v))
        count = self.fresh("n")
        self.lines.append(f"{count} = torch.tensor({k} + 1)")
        self.name[id(op.results[-1])] = count
        self.dynamic.add(id(op.results[-1]))
        return 1

    def hoisted(self, op: Op, args: list[str]) -> int:
        """``op``'s results as snapshots of its fixed operands (recomputed when one is written in place)."""
        key = (id(op), *(self.glb[a].data_ptr() for a in args))
        if key not in self.ex.hoisted:  # one snapshot per result (quantize packs a weight into several)
            names = [f"_r{i}" for i in range(len(op.results))]
            sources = [self.glb[a] for a in args]
            scope = dict(self.glb)
            if op.name == "fused":
                scope["_evaluate_fused"] = _fused_evaluator(op, self.ex.target.device)
                line = f"{', '.join(names)}, = _evaluate_fused({', '.join(args)})"
            else:
                line = call_line(op, args, [], names)
            results = _LineResults(line, scope, sources)
            self.ex.hoisted[key] = [Snapshot.of(sources, functools.partial(results.result, name)) for name in names]
        for v, snap in zip(op.results, self.ex.hoisted[key]):
            self.snapshots.append(snap)  # shared by the plans of all shapes; refreshed by whichever runs
            self.name[id(v)] = self.static(snap.target, "H")
        return 0

    def timed_step(self, op: Op) -> int:
        """``step(op)`` between two clock readings, recorded as a timeline ``Event`` (see runtime/timeline.py)."""
        self.glb.update(_clock=time.perf_counter, _events=self.ex.timeline, _Event=Event)
        at = len(self.lines)
        launches = self.step(op)
        if len(self.lines) == at:  # a view, or computed once: nothing runs per call
            return launches
        kind = collective_kind(op.name)
        key = self.name.get(id(op.results[0]), "") if kind == "start" else \
            self.name.get(id(op.operands[0]), "") if kind == "wait" else ""
        pair = self.pairs.get(id(op))
        ops = (pair.linear, op) if pair is not None else (op,)  # a linear runs in its epilogue's step
        label = "+".join(o.name for o in ops) + (f" {ops[0].loc.module}" if ops[0].loc.module else "")
        if self.ex.record_functions:  # torch.profiler is on: the step by name in its trace
            self.lines.insert(at, f"_rf = _record_function({label!r}); _rf.__enter__()")
            self.lines.append("_rf.__exit__(None, None, None)")
            self.glb["_record_function"] = torch.profiler.record_function
        if self.ex.timeline is not None:
            works = [self.work(o) for o in ops]
            nbytes = sum(b for b, _ in works)
            flops = None if any(f is None for _, f in works) else sum(f for _, f in works)
            self.lines.insert(at, "_t = _clock()")
            self.lines.append(f"_events.append(_Event({label!r}, {kind!r}, _t, _clock(), {key!r}, {nbytes}, {flops}))")
        return launches

    def work(self, op: Op) -> tuple[int, int | None]:
        """Bytes of ``op``'s operands and results and its FLOPs (the registry's count) at this plan's sizes;
        (0, None) where a size is known only per call."""
        values = (*op.operands, *op.results)
        shapes = [self.shape(v) for v in values]
        if not all(isinstance(d, int) for shape in shapes for d in shape):
            return 0, None
        # torch's element sizes (a bf16 element is 2 bytes); a gathered table counts the rows read
        nbytes = sum(bytes_read(op, k, self.nbytes) for k in range(len(op.operands))) + \
            sum(self.nbytes(v) for v in op.results)
        opdef = REGISTRY.get(op.name)
        n = len(op.operands)
        flops = opdef.flop_count(shapes[:n], shapes[n:], op.attrs) if opdef is not None else None
        return nbytes, flops

    def route(self, op: Op, args: list[str]) -> int:
        """``route``: call the layer's program when the decision holds, else pass the ``otherwise`` values (copies:
        the arena may reuse an input's buffer after this step, while the result lives on)."""
        program = self.ex.loops[id(op)]
        body, out = self.static(program, "R"), self.fresh("o")
        weights = self.static({p.key: self.weights[p.key] for p in program.graph.params}, "W")
        inputs = [a for a, v in zip(args[1:], op.operands[1:]) if v not in self.param_values]
        passed = [f"{args[1 + i]}.clone()" if i >= 0 else
                  f"torch.zeros({self.shape(v)}, dtype={to_torch(v.type.dtype)}, device={self.device!r})"
                  for i, v in zip(op.attrs["otherwise"], op.results)]
        self.lines += [f"if bool({args[0]}):",
                       f"    {out} = {body}([{', '.join(inputs)}], {weights})",
                       "else:",
                       f"    {out} = [{', '.join(passed)}]"]
        for i, v in enumerate(op.results):
            self.name[id(v)] = f"{out}[{i}]"
            self.dynamic.add(id(v))
        return 1

    def error_slot(self, checks: Any) -> str:
        """A zeroed ``[check, value, size]`` buffer for one kernel; the wrapper tests it after the launches."""
        slot = torch.zeros(3, dtype=torch.int64, device=self.device)
        name = self.static(self.ex.target.view(slot), "E")
        self.error_slots.append((name, self.static(tuple(checks), "C")))
        return name

    def check_index_assumptions(self, assumptions: Sequence[Any]) -> None:
        """Index bounds the sizes fix: checked now when the plan fixes the sizes, else per call."""
        now = [a for a in assumptions if is_static(self.size(a.lo), self.size(a.hi), self.size(a.size))]
        check_assumptions(now, self.size)
        for a in assumptions:
            if a not in now:
                self.lines.append(f"check_assumption({self.static(a, 'I')}, {self.size(a.lo)}, {self.size(a.hi)}, "
                                  f"{self.size(a.size)})")

    def writes_into_out(self, op: Op) -> bool:
        if id(op) in self.ex.hoisted_ops:
            return False
        return op.name == "fused" or writes_into_out(op.name) or id(op) in self.ex.natives

    def nbytes(self, v: Value) -> int:
        n = v.type.dtype.itemsize
        for d in self.shape(v):
            n *= d
        return n

    def nbytes_expr(self, v: Value) -> Any:
        """A value's bytes as a SymPy expression of the size symbols."""
        return sympy.expand(numel(v.type.shape) * v.type.dtype.itemsize)

    def step(self, op: Op) -> int:
        if id(op) in self.ex.hoisted_ops:  # computed now, once: its operands are fixed for the plan
            return self.hoisted(op, [self.name[id(v)] for v in op.operands])
        if op.name == "fused":
            ck = self.ex.kernels[id(op)]
            fn = self.static(ck.fn, "K")
            args = [self.flat_of(v) for v in op.operands] + [self.flat_of(v) for v in op.results]
            self.check_index_assumptions(ck.kernel.assumptions)
            if ck.kernel.checks:
                args.append(self.error_slot(ck.kernel.checks))
            known = self.kernel_sizes(ck)
            args += [str(known[s]) for s in ck.kernel.sizes]
            args += [str(v) if isinstance(v, int) else self.static(v, "P") for v in ck.values]
            outer = _evaluate_expr(ck.kernel.outer, known)
            inner = _evaluate_expr(ck.kernel.row_extent, known) if ck.kernel.row_extent is not None else None
            launch = self.ex.target.launch(fn, args, ck.kernel, outer, inner)
            pair = self.pairs.get(id(op))
            if pair is None:
                self.lines.append(launch)
                return 1
            linear = pair.linear
            linear_args = [self.name[id(v)] for v in linear.operands]
            out = self.name[id(linear.result)]
            apart = self.ex.target.native_lines(self.ex.natives[id(linear)], linear, linear_args, out, self)
            self.lines += self.ex.target.epilogue_lines(pair, linear_args, args, apart + [launch], self)
            return 1
        if id(op) in self.pairs:  # a linear computed with the kernel after it (see above)
            return 0
        args = [self.name[id(v)] for v in op.operands]
        if id(op) in self.ex.loops:  # a loop body or a routed layer: a program of its own
            return self.route(op, args) if op.name == "route" else self.loop(op, args)
        if id(op) in self.ex.natives:
            self.lines += self.ex.target.native_lines(self.ex.natives[id(op)], op, args, self.name[id(op.results[0])],
                                                      self)
            return 1
        if category(op.name).free:
            exprs = view_expr(op, args[0] if args else "", self.size)
            # per call when an operand is, or the view's sizes are
            dynamic = any(id(v) in self.dynamic for v in op.operands) or any(SIZE_NAME.search(e) for e in exprs)
            made = [] if dynamic else [eval(e, self.glb) for e in exprs]  # noqa: S307 - our own generated code
            if made and op.operands:  # a reshape that must copy is a snapshot: redo it each call
                base = self.glb[args[0]].untyped_storage().data_ptr()
                dynamic = any(m.untyped_storage().data_ptr() != base for m in made)
            for i, (v, e) in enumerate(zip(op.results, exprs)):
                if dynamic:
                    name = self.fresh("v")
                    self.lines.append(f"{name} = {e}")
                    self.dynamic.add(id(v))
                else:
                    name = self.static(made[i], "V")
                self.name[id(v)] = name
            return 0
        if writes_into_out(op.name) and all(id(v) in self.name for v in op.results):
            outs = [self.name[id(v)] for v in op.results]
            self.lines.append(call_line(op, args, outs, outs, self.derive))
            return 1
        results = [self.fresh("r") for _ in op.results]
        line = call_line(op, args, [], results, self.derive)
        if id(op) in self.in_place:
            # the update lands in the input itself; out of place if the caller's inputs share memory
            if "distinct_inputs" not in self.glb:  # once per call, before the first update
                self.glb["distinct_inputs"] = distinct_inputs
                self.lines.append("_distinct = distinct_inputs(inputs)")
            self.lines += ["if _distinct:",
                           f"    {line.replace('index_put.default(', 'index_put_.default(', 1)}",
                           "else:",
                           f"    {line}"]
        else:
            self.lines.append(line)
        for v, r in zip(op.results, results):
            self.name[id(v)] = r
            self.dynamic.add(id(v))
            self.owned.add(id(v))  # a new tensor, or the updated input the model returns as eager would
        return 1

    def kernel_sizes(self, ck: CompiledKernel) -> dict[str, Any]:
        """The values of a kernel's size symbols and lifted constants in this plan (ints or per-call code)."""
        bound = {s: self.size(sympy.Symbol(s, integer=True, positive=True)) for s in ck.kernel.sizes}
        return {**bound, **dict(zip(ck.kernel.params, ck.values))}  # a shared kernel's sizes are params

    def paired_epilogues(self) -> dict[int, GemmEpilogue]:
        """The target's GEMM epilogue pairs this plan runs as one call, by the ids of both ops: the weight fixed
        for the plan, and rows enough for the GEMM (``gemm_epilogue.runs_the_gemm``; decided per call where
        the rows are known only then)."""
        found: dict[int, GemmEpilogue] = {}
        for pair in self.ex.epilogues.values():
            x, w = pair.linear.operands[:2]
            rows = math.prod(self.shape(x)[:-1])
            if self.fixed_for_plan(w) and (not is_static(rows) or runs_the_gemm(rows, pair.most_rows)):
                found[id(pair.linear)] = found[id(pair.fused)] = pair
        return found

    def fixed_for_plan(self, v: Value) -> bool:
        """Whether ``v`` is a weight, computed once per plan from weights (a folded norm's), or a view of one."""
        if v in self.param_values:
            return True
        op = self.producer.get(v)
        return op is not None and (id(op) in self.ex.hoisted_ops or
                                   (category(op.name).free and bool(op.operands) and
                                    all(self.fixed_for_plan(o) for o in op.operands)))

    def in_place_updates(self, steps: Sequence[Op]) -> dict[int, int]:
        """The ``index_put`` ops that may write into the graph input they update (``Executor.updates``):
        the op's result is that input's new value, nothing reads the old value (or a view of it) after
        the op, and the op does not read it through another operand."""
        position = {id(op): i for i, op in enumerate(steps)}
        readers = self.readers
        found: dict[int, int] = {}
        for i, x in enumerate(self.g.inputs):
            if i not in self.ex.updates:
                continue
            new = self.g.outputs[self.ex.updates[i]]
            aliases, frontier = {x}, [x]
            while frontier:  # x and the views of it
                for op in readers.get(frontier.pop(), []):
                    if category(op.name).free and op.operands and op.operands[0] in aliases:
                        fresh = [r for r in op.results if r not in aliases]
                        aliases.update(fresh)
                        frontier += fresh
            writers = [op for op in readers.get(x, []) if op.name == "index_put" and op.operands[0] is x
                       and op.results[0] is new and not any(v in aliases for v in op.operands[1:])]
            if len(writers) != 1 or any(v in aliases for v in self.g.outputs):
                continue
            at = position[id(writers[0])]
            if all(position[id(op)] < at for a in aliases for op in readers.get(a, [])
                   if op is not writers[0] and not category(op.name).free):
                found[id(writers[0])] = i
        return found
