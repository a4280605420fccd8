"""A Program: generated kernels for fused regions, torch library calls, one static arena.

For each concrete set of input shapes a plan is built once: every intermediate gets a
place in one arena (``passes.memory``), weights and arena buffers get their kernel-side
views once (zero-copy: NumPy on the CPU, CuPy through DLPack on the GPU), and a Python
wrapper is generated that launches the kernels and library calls in order. Calls with
the same shapes reuse the plan. A ``Target`` (``cpu.py``, ``cuda.py``) supplies kernel
source, compilation, device and launch syntax.
"""
from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch

from ..codegen.kernel import Const, Kernel
from ..codegen.lower import lower_kernels
from ..ir.core import Graph, Op, Value, producers, region_graph, users
from ..ir.dtypes import DType, to_torch
from ..ir.errors import LaminaError
from ..ir.interpreter import bind_symbols
from ..ir.shapes import evaluate
from ..ir.ops import category, lookup
from ..passes.memory import Lifetime, MemoryPlan, plan_memory
from .kernel_errors import check_assumptions, raise_kernel_errors
from .library import call_line, hoisted_when_static, view_expr, writes_into_out
from .snapshot import Snapshot, refresh_all

class BackendError(LaminaError, RuntimeError):
    """The backend cannot run this graph (an unsupported dtype, a missing device)."""


@dataclass
class CompiledKernel:
    kernel: Kernel
    source: str
    fn: Any = None


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

    def size(self, d: Any) -> int:
        """A dim (int or size symbol) under this plan's input shapes."""
        raise NotImplementedError


class Target:
    """What a device contributes to a Program (see cpu.CpuTarget, cuda.CudaTarget)."""

    name = "target"
    device = "cpu"
    split_last = False  # lower pointwise kernels as rows x last dim (see lower_region)
    supported: frozenset[DType] = frozenset()

    def source(self, kernel: Kernel) -> str:
        raise NotImplementedError

    def compile(self, kernels: Sequence[CompiledKernel]) -> None:
        """Set ``fn`` of each kernel (identical sources compile once)."""
        raise NotImplementedError

    def view(self, tensor: torch.Tensor) -> Any:
        """The flat, zero-copy kernel-side view of a contiguous tensor."""
        raise NotImplementedError

    def view_expr(self, name: str) -> str:
        """Wrapper code making that view of a per-call tensor ``name``."""
        raise NotImplementedError

    def launch(self, fn: str, args: Sequence[str], kernel: Kernel, outer: int, inner: int | None) -> str:
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


@dataclass
class Plan:
    """The program for one set of input shapes: wrapper source, its globals, memory figures."""

    source: str
    run: Any
    memory: MemoryPlan
    launches: int
    arena: torch.Tensor | None = None
    poison_views: list = field(default_factory=list)


@dataclass(frozen=True)
class PlanCacheInfo:
    """An executor's plans: how many are kept (at most ``limit``, least recently used evicted), how
    many were built in all, and the bytes their arenas hold."""

    plans: int
    limit: int
    builds: int
    arena_bytes: int


MAX_PLANS = 8  # plans kept per executor: a decode loop with a new length per token keeps memory bounded


class Executor:
    """Runs a fused graph on a Target; plans are cached per input-shape signature, the ``max_plans``
    most recently used ones (``cache_info()`` reports them).

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
        self._check_dtypes()
        self.kernels = {id(op): CompiledKernel(kernel, target.source(kernel))
                        for op, kernel in lower_kernels(graph, target.split_last, nested=False)}
        self.natives = {id(op): fn for op in graph.ops if (fn := target.native(op)) is not None}
        # a loop body runs as a program of its own, called once per iteration
        self.loops = {id(op): Executor(region_graph(op.regions[0]), target, poison)
                      for op in graph.ops if lookup(op.name).program_regions}
        self.iterations: list[int] = []  # iteration counts of the last call's iterate ops, in order
        self.residuals: list[float] = []  # and the residual each loop ended with (its last update's norm)
        self.plans: OrderedDict[tuple, Plan] = OrderedDict()  # least recently used first
        self.max_plans, self.plan_builds = max_plans, 0
        self.hoisted_ops = _hoisted(graph)
        self.hoisted: dict[tuple, list[Snapshot]] = {}  # their values (stacked weights), shared by all plans
        self.lock = threading.Lock()
        target.compile(list(self.kernels.values()))

    def _check_dtypes(self) -> None:
        for op in self.graph.walk():
            for v in op.results:
                if v.type.dtype not in self.target.supported:
                    raise BackendError(f"the {self.target.name} backend does not support {v.type.dtype} "
                                       f"({op.describe()}); use backend='reference' for f16/bf16/i4 models")

    def sources(self) -> dict[str, str]:
        return {ck.kernel.name: ck.source for ck in self.kernels.values()}

    def __call__(self, inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        with self.lock:
            plan = self._plan(inputs, weights)
            if self.poison:
                for view in plan.poison_views:
                    view.fill_(math.nan if view.dtype.is_floating_point else -7)
            return plan.run(inputs)

    def plan_for(self, inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> Plan:
        with self.lock:
            return self._plan(inputs, weights)

    def _plan(self, inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> Plan:
        """The plan for these input shapes, built if needed; the least recently used plan beyond
        ``max_plans`` is dropped (with its arena). Called under the lock."""
        key = tuple(tuple(x.shape) for x in inputs)
        plan = self.plans.get(key)
        if plan is None:
            plan = self.plans[key] = self.build_plan(inputs, weights)
            self.plan_builds += 1
            while len(self.plans) > self.max_plans:
                self.plans.popitem(last=False)
        else:
            self.plans.move_to_end(key)
        return plan

    def cache_info(self) -> PlanCacheInfo:
        with self.lock:
            arena = sum(p.arena.numel() * p.arena.element_size() for p in self.plans.values() if p.arena is not None)
            return PlanCacheInfo(len(self.plans), self.max_plans, self.plan_builds, arena)

    def build_plan(self, inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> Plan:
        return _PlanBuilder(self, inputs, weights).build()


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


def _evaluate_line(line: str, scope: dict[str, Any]) -> Any:
    """The value ``_r`` a generated wrapper line assigns, run in ``scope``."""
    exec(line, scope)  # noqa: S102 - our own generated code
    return scope["_r"]


def _dims(shape: Sequence[Any], bindings: Mapping[sympy.Symbol, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, bindings) for d in shape)


def _in_consumer_order(raw: torch.Tensor, shape: tuple[int, ...], users: Sequence[Op]) -> torch.Tensor:
    """``raw`` viewed as ``shape``; when a value's only reader permutes it, its memory is laid out in
    the permuted order, so the permute (and a reshape after it) stay views instead of copies."""
    if len(users) == 1 and users[0].name == "permute":
        dims = tuple(users[0].attrs["dims"])
        inverse = tuple(int(i) for i in np.argsort(dims))
        return raw.view(tuple(shape[d] for d in dims)).permute(inverse)
    return raw.view(shape)


def _hoisted(g: Graph) -> set[int]:
    """Library ops computed once per plan (``LibraryCall.hoisted_when_static``) whose operands are weights, constants or views of them."""
    static = {id(p.value) for p in g.params}
    hoisted: set[int] = set()
    for op in g.ops:
        if not all(id(v) in static for v in op.operands):
            continue
        if hoisted_when_static(op.name):
            hoisted.add(id(op))
        elif not category(op.name).free:
            continue
        static.update(id(r) for r in op.results)
    return hoisted


class _PlanBuilder(PlanContext):
    def __init__(self, ex: Executor, inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> None:
        g = ex.graph
        self.ex, self.g = ex, g
        self.bindings = bind_symbols([v.type for v in g.inputs], [np.empty(tuple(x.shape), dtype=bool) for x in inputs])
        self.glb: dict[str, Any] = {"torch": torch, "np": np, **ex.target.namespace()}
        self.device = ex.target.device
        self.lines: list[str] = []
        self.name: dict[int, str] = {}
        self.dynamic: set[int] = set()      # values that change per call
        self.flat: dict[int, str] = {}      # value -> name of its flat numpy view
        self.counter = 0
        self.weights = weights
        self.error_slots: list[tuple[str, str]] = []  # (kernel error buffer, its checks) in launch order
        self.snapshots: list[Snapshot] = []  # copies of weights, refreshed when a weight changes in place
        self.arena: torch.Tensor | None = None

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def size(self, d: Any) -> int:
        return evaluate(d, self.bindings) if not isinstance(d, int) else d

    def static(self, value: Any, prefix: str) -> str:
        name = self.fresh(prefix)
        self.glb[name] = value
        return name

    def value_of(self, name: str) -> Any | None:
        return self.glb.get(name)

    def derive(self, base: str, suffix: str) -> str:
        """``base + suffix`` as a static view when ``base`` is static and the view shares its memory."""
        if base not in self.glb:
            return f"{base}{suffix}"
        view = eval(f"{base}{suffix}", self.glb)  # noqa: S307 - our own generated code
        if view.untyped_storage().data_ptr() != self.glb[base].untyped_storage().data_ptr():
            return f"{base}{suffix}"  # a copy would be a stale snapshot
        return self.static(view, "D")

    def snapshot(self, sources: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A copy of weights kept in step with them (see ``runtime/snapshot.py``)."""
        snap = Snapshot.of(sources, compute)
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
        """Plan the arena, bind every value to a name, then emit and compile the wrapper."""
        steps = list(self.g.ops)
        memory, arena_values = self.plan_arena(steps)
        poison = self.place_in_arena(memory, arena_values, steps)
        self.bind_inputs_and_weights()
        source, launches = self.emit_wrapper(steps)
        namespace = dict(self.glb)
        exec(compile(source, f"<lamina wrapper {self.g.name}>", "exec"), namespace)
        return Plan(source, namespace["run"], memory, launches, self.arena, poison)

    # -- arena planning ---------------------------------------------------------------------------
    def plan_arena(self, steps: Sequence[Op]) -> tuple[MemoryPlan, list[tuple[Value, int]]]:
        """Offsets in one arena for the results kernels and GEMMs write that are not graph outputs:
        each lives from its step to its last use (a view keeps its base alive; an output that views an
        intermediate keeps it to the end, where it is copied out)."""
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
        arena_values = [(v, i) for i, op in enumerate(steps) if self.writes_into_out(op)
                        for v in op.results if v not in outputs]
        lifetimes = [Lifetime(str(id(v)), self.nbytes(v), i, last_use.get(v, i)) for v, i in arena_values]
        return plan_memory(lifetimes), arena_values

    def place_in_arena(self, memory: MemoryPlan, arena_values: Sequence[tuple[Value, int]],
                       steps: Sequence[Op]) -> list[torch.Tensor]:
        """Allocate the arena and name each planned value's view of it; the views (to poison)."""
        self.arena = arena = torch.empty(max(memory.peak, 1), dtype=torch.uint8, device=self.device)
        readers, producer = users(steps), producers(steps)
        views = []
        for v, _ in arena_values:
            off = memory.offsets[str(id(v))]
            raw = arena[off: off + self.nbytes(v)].view(to_torch(v.type.dtype))
            shape = _dims(v.type.shape, self.bindings)
            # native kernels take strided outputs; generated kernels and GEMMs write contiguous ones
            t = _in_consumer_order(raw, shape, readers.get(v, [])) if id(producer[v]) in self.ex.natives \
                else raw.view(shape)
            self.name[id(v)] = self.static(t, "A")
            views.append(t)
        return views

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
        """The wrapper's source ``run(inputs)`` and its number of launches."""
        self.lines = self.ex.target.prologue() + [f"x{i} = inputs[{i}]" for i in range(len(self.g.inputs))]
        snapshots_at = len(self.lines)  # where the refresh goes, once every snapshot is known
        if self.ex.loops:
            self.glb["_iterations"], self.glb["_residuals"] = self.ex.iterations, self.ex.residuals
            self.lines += ["_iterations.clear()", "_residuals.clear()"]
        fresh_outputs = self.allocate_outputs(steps)
        launches = sum(self.step(op) for op in steps)
        if self.snapshots:
            self.glb["_snapshots"], self.glb["refresh_all"] = self.snapshots, refresh_all
            self.lines.insert(snapshots_at, "refresh_all(_snapshots)")
        if self.error_slots:  # kernels that found a bad index or a division by zero
            self.glb["raise_kernel_errors"] = raise_kernel_errors
            flags = " or ".join(f"{e}[0]" for e, _ in self.error_slots)
            slots = ", ".join(f"({e}, {c})" for e, c in self.error_slots)
            self.lines.append(f"if {flags}:")
            self.lines.append(f"    raise_kernel_errors([{slots}])")
        returns = [self.name[id(v)] if v in fresh_outputs else f"{self.name[id(v)]}.clone()" for v in self.g.outputs]
        self.lines.append(f"return [{', '.join(returns)}]")
        return "def run(inputs):\n" + "\n".join("    " + line for line in self.lines) + "\n", launches

    def allocate_outputs(self, steps: Sequence[Op]) -> set[Value]:
        """Outputs written by a kernel or GEMM get a fresh tensor per call (the caller keeps it)."""
        written = {v for op in steps if self.writes_into_out(op) for v in op.results}
        fresh = set()
        for v in self.g.outputs:
            if v in written and v not in fresh:
                name = self.fresh("y")
                shape = _dims(v.type.shape, self.bindings)
                self.lines.append(f"{name} = torch.empty({shape}, dtype={to_torch(v.type.dtype)}, device={self.device!r})")
                if self.ex.poison:  # unwritten elements show as NaN / -7
                    fill = "float('nan')" if v.type.dtype.is_float else "-7"
                    self.lines.append(f"{name}.fill_({fill})")
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

    def error_slot(self, checks: Any) -> str:
        """A zeroed ``[check, value, size]`` buffer for one kernel; the wrapper tests it after the launches."""
        slot = torch.zeros(3, dtype=torch.int64, device=self.device)
        name = self.static(self.ex.target.view(slot), "E")
        self.error_slots.append((name, self.static(tuple(checks), "C")))
        return name

    def writes_into_out(self, op: Op) -> bool:
        if id(op) in self.ex.hoisted_ops:
            return False
        return op.name == "fused" or writes_into_out(op.name) or id(op) in self.ex.natives

    def nbytes(self, v: Value) -> int:
        n = 1
        for d in _dims(v.type.shape, self.bindings):
            n *= d
        return n * torch.empty((), dtype=to_torch(v.type.dtype)).element_size()

    def step(self, op: Op) -> int:
        if op.name == "fused":
            ck = self.ex.kernels[id(op)]
            fn = self.static(ck.fn, "K")
            args = [self.flat_of(v) for v in op.operands] + [self.flat_of(v) for v in op.results]
            check_assumptions(ck.kernel.assumptions, self.size)
            if ck.kernel.checks:
                args.append(self.error_slot(ck.kernel.checks))
            bound = {sympy.Symbol(s, integer=True, positive=True): self.size(sympy.Symbol(s, integer=True, positive=True))
                     for s in ck.kernel.sizes}
            args += [str(v) for v in bound.values()]
            outer = _evaluate_expr(ck.kernel.outer, bound)
            inner = _evaluate_expr(ck.kernel.row_extent, bound) if ck.kernel.row_extent is not None else None
            self.lines.append(self.ex.target.launch(fn, args, ck.kernel, outer, inner))
            return 1
        args = [self.name[id(v)] for v in op.operands]
        if id(op) in self.ex.loops:  # a loop body: a program of its own
            return self.loop(op, args)
        if id(op) in self.ex.hoisted_ops:  # computed now, once: its operands are fixed for the plan
            key = (id(op), *(self.glb[a].data_ptr() for a in args))
            if key not in self.ex.hoisted:
                compute = functools.partial(_evaluate_line, call_line(op, args, [], ["_r"]), dict(self.glb))
                self.ex.hoisted[key] = [Snapshot.of([self.glb[a] for a in args], compute)]
            for v, snap in zip(op.results, self.ex.hoisted[key]):
                self.snapshots.append(snap)  # shared by the plans of all shapes; refreshed by whichever runs
                self.name[id(v)] = self.static(snap.target, "H")
            return 0
        if id(op) in self.ex.natives:
            self.lines += self.ex.target.native_lines(self.ex.natives[id(op)], op, args, self.name[id(op.results[0])],
                                                      self)
            return 1
        if category(op.name).free:
            exprs = view_expr(op, args[0] if args else "", self.size)
            dynamic = any(id(v) in self.dynamic for v in op.operands)
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
        self.lines.append(call_line(op, args, [], results, self.derive))
        for v, r in zip(op.results, results):
            self.name[id(v)] = r
            self.dynamic.add(id(v))
        return 1
