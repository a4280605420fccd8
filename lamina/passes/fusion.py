"""fuse: group ops into ``fused`` regions, one kernel each.

Op categories (``OpDef.category``):
- library: GEMMs, convolutions, attention, pooling, scans — stay outside regions and run
  as library calls or templates; a linear's bias is split off into the epilogue kernel;
- view: reshape/permute/expand/slice/split, and constants (full/arange) — free index
  transforms, copied into every region that reads them, never kernels of their own;
- pointwise: elementwise ops and gathers (embedding, index) computed per output element;
- reduction: sum/mean/amax/amin/var and the row ops softmax, log_softmax, layer_norm, rms_norm;
- scan: ``layer_scan`` (the prefix sum of a Newton step), a kernel of its own that nothing joins.

Cost model (greedy, in program order): a pointwise or reduction op joins the kernel of an
operand's producer when (1) the kernel's iteration space fits — pointwise over the same
shape, a reduction over that shape, pointwise after a reduction over the row shape or the
reduced shape — so the intermediate never goes to memory (bytes saved: its size, twice);
(2) every other operand was produced before that kernel began, so no cycle can form;
(3) the kernel stays under MAX_OPS ops (bounds compile time). An op that reads only inputs,
weights and constants joins the latest kernel reading one of the same operands (siblings:
the operand is read once). Views and constants are
recomputed in each consumer (they cost no memory traffic). Afterwards a pointwise kernel whose results
only one kernel reads is merged into it (``fusion_merge.py``), computed where it is read.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..ir.builder import OpEmitter, RegionBuilder
from ..ir.core import Graph, Op, Value
from ..ir.opdef import Category
from ..ir.ops import category, lookup, reduced_axes
from .fusion_merge import absorb_producers
from .toolkit import ValueMap, map_region_body, producers, rebuild, users

MAX_OPS = 48
REDUCTION, SCAN = Category.REDUCTION, Category.SCAN


def _joins_kernels(name: str) -> bool:
    """Pointwise and reduction ops are grouped into kernels; scans get one of their own."""
    return category(name) in (Category.ELEMENTWISE, Category.POINTWISE, Category.REDUCTION)


def _free(name: str) -> bool:
    return category(name).free

# how an operand reaches an op: the op that made it (None: an input, weight or constant) and the views between
Trace = tuple[Op | None, list[Op]]


@dataclass(eq=False)
class _Group:
    first: int
    ops: list[Op] = field(default_factory=list)
    domain: tuple = ()             # the row shape (or output shape for pointwise groups)
    axes: tuple[int, ...] | None = None  # reduced axes; None for a pointwise group
    per_row: set[Op] = field(default_factory=set)  # members whose values exist for the current row only

    def reduced_shapes(self) -> set[tuple]:
        if self.axes is None:
            return set()
        keep = tuple(1 if i in self.axes else d for i, d in enumerate(self.domain))
        drop = tuple(d for i, d in enumerate(self.domain) if i not in self.axes)
        return {keep, drop}

    def accepts(self, op: Op, traces: Sequence[Trace]) -> bool:
        if len(self.ops) >= MAX_OPS or any(category(o.name) is SCAN for o in self.ops[:1]):
            return False
        shape = op.results[0].type.shape
        if category(op.name) is REDUCTION:
            row, axes = op.operands[0].type.shape, reduced_axes(op)
            fits = row == self.domain and self.axes in (None, axes)
        else:
            fits = shape == self.domain or shape in self.reduced_shapes()
        return fits and all(self.reads_current_row(op, k, trace) for k, trace in enumerate(traces))

    def reads_current_row(self, op: Op, k: int, trace: Trace) -> bool:
        """Whether operand ``k`` of ``op`` is read at the kernel's current row when it comes from a member
        that exists per row (a reduction's accumulator, or anything computed from one).

        A row kernel computes a reduction once per row; reading its value at another row (through a
        permuting view, a gather, or broadcasting a dropped-axis result along the row) would silently
        read the current row's instead. Such an op starts a kernel of its own."""
        source, views = trace
        if source is None or source not in self.per_row:
            return True  # inputs and per-element members are readable at any position
        if lookup(op.name).reads_remapped(k):
            return False
        keep, drop = (tuple(1 if i in self.axes else d for i, d in enumerate(self.domain)),
                      tuple(d for i, d in enumerate(self.domain) if i not in self.axes))
        shapes = {self.domain, keep, drop}
        for view in views:
            if lookup(view.name).reads_remapped(0) or view.operands[0].type.shape not in shapes \
                    or view.results[0].type.shape not in shapes:
                return False
        read = op.operands[k].type.shape
        target = self.domain if category(op.name) is REDUCTION else op.results[0].type.shape
        return read == target or (target == self.domain and read == keep)

    def add(self, op: Op, traces: Sequence[Trace]) -> None:
        self.ops.append(op)
        if category(op.name) is REDUCTION:
            self.axes = reduced_axes(op)
            self.per_row.add(op)
        elif any(source is not None and source in self.per_row for source, _ in traces):
            self.per_row.add(op)


def split_linear_bias(graph: Graph) -> Graph:
    """linear(x, w, b) -> add(linear(x, w), b), so the bias joins the GEMM's epilogue kernel.

    Only where an epilogue kernel will exist: a linear read only through views or by library
    ops keeps its bias, which the GEMM library call adds for free (addmm)."""
    readers = users(graph.ops)
    outputs = set(graph.outputs)

    def feeds_kernel(v: Value) -> bool:
        if v in outputs:
            return True
        for u in readers.get(v, []):
            if _joins_kernels(u.name) or (_free(u.name) and any(feeds_kernel(r) for r in u.results)):
                return True
        return False

    out = OpEmitter()
    values = ValueMap()
    for op in graph.ops:
        op = values.op(op)
        if op.name == "linear" and len(op.operands) == 3 and feeds_kernel(op.result):
            x, w, b = op.operands
            product = out.emit("linear", x, w, loc=op.loc)
            values[op.result] = out.emit("add", product, b, loc=op.loc)
        else:
            out.append(op)
    return rebuild(graph, out.ops, values)


def in_program_regions(fn: Callable[[Graph], Graph]) -> Callable[[Graph], Graph]:
    """``fn`` applied to a graph and to the bodies of its ops whose regions are programs (``iterate``)."""
    def apply(graph: Graph) -> Graph:
        graph = fn(graph)
        if not any(lookup(op.name).program_regions for op in graph.ops):
            return graph
        ops = tuple(op.replace(regions=tuple(map_region_body(r, apply) for r in op.regions))
                    if lookup(op.name).program_regions else op for op in graph.ops)
        return graph.replace(ops=ops)

    apply.__doc__, apply.__name__ = fn.__doc__, fn.__name__
    return apply


@in_program_regions
def fuse(graph: Graph) -> Graph:
    """Group the graph's pointwise and reduction ops into ``fused`` regions, one kernel each (see module doc)."""
    graph = split_linear_bias(graph)
    producer = {v: (i, op) for i, op in enumerate(graph.ops) for v in op.results}
    group_of: dict[Op, _Group] = {}
    groups: list[_Group] = []

    def source(v: Value) -> tuple[int, Op] | None:
        """The compute op behind ``v``, looking through views."""
        while v in producer:
            i, op = producer[v]
            if not _free(op.name):
                return i, op
            if not op.operands:
                return None  # a constant: recomputed wherever it is read
            v = op.operands[0]
        return None

    def trace(v: Value) -> Trace:
        """The compute op behind ``v`` and the views from it to ``v``."""
        views: list[Op] = []
        while v in producer:
            _, op = producer[v]
            if not _free(op.name):
                return op, views
            if not op.operands:
                return None, views
            views.append(op)
            v = op.operands[0]
        return None, views

    for index, op in enumerate(graph.ops):
        if category(op.name) is SCAN:
            groups.append(_Group(first=index, ops=[op]))
            group_of[op] = groups[-1]
        if not _joins_kernels(op.name):
            continue
        sources = [source(v) for v in op.operands]
        traces = [trace(v) for v in op.operands]
        chosen = None
        for src in reversed([s for s in sources if s is not None]):
            group = group_of.get(src[1])
            if group is None or not group.accepts(op, traces):
                continue
            others = [s for s in sources if s is not None and group_of.get(s[1]) is not group]
            if all(i < group.first for i, _ in others):
                chosen = group
                break
        if chosen is None and all(s is None for s in sources):
            chosen = _sibling_group(op, groups)
        if chosen is None:
            chosen = _Group(first=index, domain=op.operands[0].type.shape if category(op.name) is REDUCTION
                             else op.results[0].type.shape)
            groups.append(chosen)
        chosen.add(op, traces)
        group_of[op] = chosen
    groups = absorb_producers(graph, groups, group_of, users(graph.ops), MAX_OPS)
    return _rebuild(graph, groups, group_of)


def _sibling_group(op: Op, groups: Sequence[_Group]) -> _Group | None:
    """The latest group that reads one of ``op``'s operands and accepts it: ``op`` reads only inputs,
    weights and constants, so joining adds no edge into the group (no cycle), and the shared operand
    is read once (``x ** 3 + x ** 2``: two branches from one input, one kernel)."""
    wanted = {v for v in op.operands if v.type.rank > 0}
    for group in reversed(groups):
        if group.accepts(op, [(None, [])] * len(op.operands)) and \
                any(v in wanted for g_op in group.ops for v in g_op.operands):
            return group
    return None


@in_program_regions
def wrap_loose_ops(graph: Graph) -> Graph:
    """Put every kernel op (pointwise, reduction, scan) left outside a ``fused`` region into a region of
    its own, one kernel each: the last lowering step of the kernel backends, so that graphs that skipped
    ``fuse`` (or ops it left alone) still run."""
    groups, group_of = [], {}
    for index, op in enumerate(graph.ops):
        if category(op.name).in_kernel:
            group = _Group(first=index, ops=[op])
            groups.append(group)
            group_of[op] = group
    return _rebuild(graph, groups, group_of) if groups else graph


def _rebuild(graph: Graph, groups: Sequence[_Group], group_of: dict[Op, _Group]) -> Graph:
    readers = users(graph.ops)
    outputs = set(graph.outputs)
    producer = producers(graph.ops)
    members = {g: set(g.ops) for g in groups}
    last_op = {g: g.ops[-1] for g in groups}

    def escapes(v: Value, g: _Group) -> bool:
        return v in outputs or any(u not in members[g] and not _is_absorbed_view(u, g, members, readers, outputs)
                                       for u in readers.get(v, []))

    out = OpEmitter()
    values = ValueMap()
    for op in graph.ops:
        group = group_of.get(op)
        if group is None:
            if _free(op.name) and all(_is_absorbed_view(op, g, members, readers, outputs) for g in _consumer_groups(op, readers, group_of)) \
                    and not _feeds_outside(op, readers, group_of, outputs):
                continue  # only fused regions read it; they recompute it
            out.append(op)
            continue
        if op is not last_op[group]:
            continue
        results = [v for g_op in group.ops for v in g_op.results if escapes(v, group)]
        if not results:
            continue  # nothing reads the group: dead code, no kernel
        region, inputs = _region(group, results, producer)
        fused = out.emit_op("fused", inputs, {}, group.ops[-1].loc, [region])
        for old, new in zip(results, fused.results):
            values[old] = new
    # operands are remapped only now: a kernel may read a result of a kernel emitted after it
    return rebuild(graph, _toposort([values.op(op) for op in out.ops]), values)


def _toposort(ops: Sequence[Op]) -> list[Op]:
    """Stable topological order: a fused op sits where its last member was, so ops placed before it
    that read one of its results must move after it (the no-cycle rule makes this always possible)."""
    import heapq

    producer = {v: i for i, op in enumerate(ops) for v in op.results}
    waiting = [0] * len(ops)
    dependents: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        deps = {producer[v] for v in op.operands if v in producer}
        waiting[i] = len(deps)
        for d in deps:
            dependents.setdefault(d, []).append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(ops[i])
        for u in dependents.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(ops):
        raise AssertionError("fuse produced a cycle: a fusion-pass bug")
    return order


def _consumer_groups(op: Op, readers: dict, group_of: dict) -> list[_Group]:
    found = []
    for v in op.results:
        for u in readers.get(v, []):
            g = group_of.get(u)
            if g is not None:
                found.append(g)
            elif _free(u.name):
                found.extend(_consumer_groups(u, readers, group_of))
    return found


def _feeds_outside(op: Op, readers: dict, group_of: dict, outputs: set[Value]) -> bool:
    """Whether a view's results reach a graph output or a non-fused op (then it must exist outside)."""
    for v in op.results:
        if v in outputs:
            return True
        for u in readers.get(v, []):
            if u in group_of:
                continue
            if not _free(u.name) or _feeds_outside(u, readers, group_of, outputs):
                return True
    return False


def _is_absorbed_view(op: Op, group: _Group, members: dict, readers: dict, outputs: set[Value]) -> bool:
    """A view (or constant) all of whose users are in ``group`` (directly or through views)."""
    if not _free(op.name):
        return False
    for v in op.results:
        if v in outputs:
            return False
        for u in readers.get(v, []):
            if u in members[group]:
                continue
            if not _is_absorbed_view(u, group, members, readers, outputs):
                return False
    return True


def _region(group: _Group, results: list[Value], producer: dict) -> tuple:
    """The region of a group: its ops plus the views/constants they read, and its external inputs."""
    needed: list[Op] = []
    seen: set[Op] = set()
    inputs: list[Value] = []
    members = set(group.ops)

    def visit(v: Value) -> None:
        op = producer.get(v)
        if op is not None and (op in members or _free(op.name)):
            if op not in seen:
                seen.add(op)
                for x in op.operands:
                    visit(x)
                needed.append(op)
        elif all(x is not v for x in inputs):
            inputs.append(v)

    for op in group.ops:
        for x in op.operands:
            visit(x)
        if op not in seen:
            seen.add(op)
            needed.append(op)
    builder = RegionBuilder([v.type for v in inputs])
    values = ValueMap()
    for v, arg in zip(inputs, builder.args):
        values[v] = arg
    for op in needed:
        values.replace_results(op, builder.append_copy(op, values.values(op.operands)).results)
    return builder.finish(values.values(results)), inputs


