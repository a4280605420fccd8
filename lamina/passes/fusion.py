"""fuse: group ops into ``fused`` regions, one kernel each.

Op classes (see ``op_class``):
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
recomputed in each consumer (they cost no memory traffic); nothing else is recomputed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..ir.builder import OpEmitter, RegionBuilder
from ..ir.core import Graph, Op, Value

MAX_OPS = 48
LIBRARY = frozenset({"matmul", "linear", "conv2d", "attention", "max_pool2d", "avg_pool2d", "cumsum", "argmax",
                     "stack", "topk", "sort", "histc", "index_put"})
VIEWS = frozenset({"reshape", "permute", "expand", "slice", "split", "full", "arange", "identity", "dropout"})
REDUCTIONS = frozenset({"sum", "mean", "amax", "amin", "var", "softmax", "log_softmax", "layer_norm", "rms_norm"})


def op_class(name: str) -> str:
    if name in LIBRARY:
        return "library"
    if name in VIEWS:
        return "view"
    if name in REDUCTIONS:
        return "reduction"
    if name in ("fused", "newton", "iterate", "yield"):
        return "structural"
    if name == "layer_scan":
        return "scan"
    return "pointwise"


def reduction_axes(op: Op) -> tuple[int, ...]:
    """The axes a reduction op reduces over its first operand."""
    rank = op.operands[0].type.rank
    if op.name in ("softmax", "log_softmax"):
        return (op.attrs["dim"] % rank,)
    if op.name in ("layer_norm", "rms_norm"):
        return tuple(range(rank - op.attrs["normalized_ndim"], rank))
    dims = op.attrs["dims"]
    return tuple(sorted(d % rank for d in dims)) if dims else tuple(range(rank))


# operands an op reads at positions other than its own output position (broadcasting aside)
REMAPPED_OPERANDS = {"gather": (0,), "index_select": (0,), "index": (0,), "embedding": (0,), "pad": (0,),
                     "slice_scatter": (1,), "as_strided": (0,), "batch_norm": (1, 2, 3, 4)}
ROW_KEEPING_VIEWS = frozenset({"identity", "dropout", "reshape", "expand"})

# how an operand reaches an op: the op that made it (None: an input, weight or constant) and the views between
Trace = tuple[Op | None, list[Op]]


@dataclass
class _Group:
    first: int
    ops: list[Op] = field(default_factory=list)
    domain: tuple = ()             # the row shape (or output shape for pointwise groups)
    axes: tuple[int, ...] | None = None  # reduced axes; None for a pointwise group
    per_row: set[int] = field(default_factory=set)  # members whose values exist for the current row only

    def reduced_shapes(self) -> set[tuple]:
        if self.axes is None:
            return set()
        keep = tuple(1 if i in self.axes else d for i, d in enumerate(self.domain))
        drop = tuple(d for i, d in enumerate(self.domain) if i not in self.axes)
        return {keep, drop}

    def accepts(self, op: Op, traces: Sequence[Trace]) -> bool:
        if len(self.ops) >= MAX_OPS or any(op_class(o.name) == "scan" for o in self.ops[:1]):
            return False
        shape = op.results[0].type.shape
        if op_class(op.name) == "reduction":
            row, axes = op.operands[0].type.shape, reduction_axes(op)
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
        if source is None or id(source) not in self.per_row:
            return True  # inputs and per-element members are readable at any position
        if k in REMAPPED_OPERANDS.get(op.name, ()) or op.name == "concat":
            return False
        keep, drop = (tuple(1 if i in self.axes else d for i, d in enumerate(self.domain)),
                      tuple(d for i, d in enumerate(self.domain) if i not in self.axes))
        shapes = {self.domain, keep, drop}
        for view in views:
            if view.name not in ROW_KEEPING_VIEWS or view.operands[0].type.shape not in shapes \
                    or view.results[0].type.shape not in shapes:
                return False
        read = op.operands[k].type.shape
        target = self.domain if op_class(op.name) == "reduction" else op.results[0].type.shape
        return read == target or (target == self.domain and read == keep)

    def add(self, op: Op, traces: Sequence[Trace]) -> None:
        self.ops.append(op)
        if op_class(op.name) == "reduction":
            self.axes = reduction_axes(op)
            self.per_row.add(id(op))
        elif any(source is not None and id(source) in self.per_row for source, _ in traces):
            self.per_row.add(id(op))


def split_linear_bias(graph: Graph) -> Graph:
    """linear(x, w, b) -> add(linear(x, w), b), so the bias joins the GEMM's epilogue kernel.

    Only where an epilogue kernel will exist: a linear read only through views or by library
    ops keeps its bias, which the GEMM library call adds for free (addmm)."""
    users: dict[int, list[Op]] = {}
    for op in graph.ops:
        for v in op.operands:
            users.setdefault(id(v), []).append(op)
    outputs = {id(v) for v in graph.outputs}

    def feeds_kernel(v: Value) -> bool:
        if id(v) in outputs:
            return True
        for u in users.get(id(v), []):
            kind = op_class(u.name)
            if kind in ("pointwise", "reduction") or (kind == "view" and any(feeds_kernel(r) for r in u.results)):
                return True
        return False

    out = OpEmitter()
    mapping: dict[int, Value] = {}
    for op in graph.ops:
        op = op.replace(operands=tuple(mapping.get(id(v), v) for v in op.operands))
        if op.name == "linear" and len(op.operands) == 3 and feeds_kernel(op.result):
            x, w, b = op.operands
            product = out.emit("linear", x, w, loc=op.loc)
            mapping[id(op.result)] = out.emit("add", product, b, loc=op.loc)
        else:
            out.append(op)
    return graph.replace(ops=tuple(out.ops), outputs=tuple(mapping.get(id(v), v) for v in graph.outputs))


def fuse(graph: Graph) -> Graph:
    """Group the graph's pointwise and reduction ops into ``fused`` regions (see module doc)."""
    graph = split_linear_bias(graph)
    producer = {id(v): (i, op) for i, op in enumerate(graph.ops) for v in op.results}
    group_of: dict[int, _Group] = {}
    groups: list[_Group] = []

    def source(v: Value) -> tuple[int, Op] | None:
        """The compute op behind ``v``, looking through views."""
        while id(v) in producer:
            i, op = producer[id(v)]
            if op_class(op.name) != "view":
                return i, op
            if not op.operands:
                return None  # a constant: recomputed wherever it is read
            v = op.operands[0]
        return None

    def trace(v: Value) -> Trace:
        """The compute op behind ``v`` and the views from it to ``v``."""
        views: list[Op] = []
        while id(v) in producer:
            _, op = producer[id(v)]
            if op_class(op.name) != "view":
                return op, views
            if not op.operands:
                return None, views
            views.append(op)
            v = op.operands[0]
        return None, views

    for index, op in enumerate(graph.ops):
        kind = op_class(op.name)
        if kind == "scan":
            groups.append(_Group(first=index, ops=[op]))
            group_of[id(op)] = groups[-1]
        if kind not in ("pointwise", "reduction"):
            continue
        sources = [source(v) for v in op.operands]
        traces = [trace(v) for v in op.operands]
        chosen = None
        for src in reversed([s for s in sources if s is not None]):
            group = group_of.get(id(src[1]))
            if group is None or not group.accepts(op, traces):
                continue
            others = [s for s in sources if s is not None and group_of.get(id(s[1])) is not group]
            if all(i < group.first for i, _ in others):
                chosen = group
                break
        if chosen is None and all(s is None for s in sources):
            chosen = _sibling_group(op, groups)
        if chosen is None:
            chosen = _Group(first=index, domain=op.operands[0].type.shape if kind == "reduction" else op.results[0].type.shape)
            groups.append(chosen)
        chosen.add(op, traces)
        group_of[id(op)] = chosen
    return _rebuild(graph, groups, group_of)


def _sibling_group(op: Op, groups: Sequence[_Group]) -> _Group | None:
    """The latest group that reads one of ``op``'s operands and accepts it: ``op`` reads only inputs,
    weights and constants, so joining adds no edge into the group (no cycle), and the shared operand
    is read once (``x ** 3 + x ** 2``: two branches from one input, one kernel)."""
    wanted = {id(v) for v in op.operands if v.type.rank > 0}
    for group in reversed(groups):
        if group.accepts(op, [(None, [])] * len(op.operands)) and \
                any(id(v) in wanted for g_op in group.ops for v in g_op.operands):
            return group
    return None


def wrap_loose_ops(graph: Graph) -> Graph:
    """Put every pointwise or reduction op outside a region into a region of its own (one kernel each),
    so a backend can run graphs that skipped ``fuse``."""
    groups, group_of = [], {}
    for index, op in enumerate(graph.ops):
        if op_class(op.name) in ("pointwise", "reduction", "scan"):
            group = _Group(first=index, ops=[op])
            groups.append(group)
            group_of[id(op)] = group
    return _rebuild(graph, groups, group_of) if groups else graph


def _rebuild(graph: Graph, groups: Sequence[_Group], group_of: dict[int, _Group]) -> Graph:
    users: dict[int, list[Op]] = {}
    for op in graph.ops:
        for v in op.operands:
            users.setdefault(id(v), []).append(op)
    outputs = {id(v) for v in graph.outputs}
    producer = {id(v): op for op in graph.ops for v in op.results}
    members = {id(g): {id(op) for op in g.ops} for g in groups}
    last_op = {id(g): g.ops[-1] for g in groups}

    def escapes(v: Value, g: _Group) -> bool:
        return id(v) in outputs or any(id(u) not in members[id(g)] and not _is_absorbed_view(u, g, members, users, outputs)
                                       for u in users.get(id(v), []))

    out = OpEmitter()
    mapping: dict[int, Value] = {}
    for op in graph.ops:
        group = group_of.get(id(op))
        kind = op_class(op.name)
        if group is None:
            if kind == "view" and all(_is_absorbed_view(op, g, members, users, outputs) for g in _consumer_groups(op, users, group_of)) \
                    and not _feeds_outside(op, users, group_of, outputs):
                continue  # only fused regions read it; they recompute it
            out.append(op)
            continue
        if op is not last_op[id(group)]:
            continue
        results = [v for g_op in group.ops for v in g_op.results if escapes(v, group)]
        if not results:
            continue  # nothing reads the group: dead code, no kernel
        region, inputs = _region(group, results, producer)
        fused = out.emit_op("fused", inputs, {}, group.ops[-1].loc, [region])
        for old, new in zip(results, fused.results):
            mapping[id(old)] = new
    # operands are remapped only now: a kernel may read a result of a kernel emitted after it
    ops = [op.replace(operands=tuple(mapping.get(id(v), v) for v in op.operands)) for op in out.ops]
    return graph.replace(ops=tuple(_toposort(ops)), outputs=tuple(mapping.get(id(v), v) for v in graph.outputs))


def _toposort(ops: Sequence[Op]) -> list[Op]:
    """Stable topological order: a fused op sits where its last member was, so ops placed before it
    that read one of its results must move after it (the no-cycle rule makes this always possible)."""
    import heapq

    producer = {id(v): i for i, op in enumerate(ops) for v in op.results}
    waiting = [0] * len(ops)
    users: dict[int, list[int]] = {}
    for i, op in enumerate(ops):
        deps = {producer[id(v)] for v in op.operands if id(v) in producer}
        waiting[i] = len(deps)
        for d in deps:
            users.setdefault(d, []).append(i)
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(ops[i])
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(ops):
        raise AssertionError("fuse produced a cycle: a fusion-pass bug")
    return order


def _consumer_groups(op: Op, users: dict, group_of: dict) -> list[_Group]:
    found = []
    for v in op.results:
        for u in users.get(id(v), []):
            g = group_of.get(id(u))
            if g is not None:
                found.append(g)
            elif op_class(u.name) == "view":
                found.extend(_consumer_groups(u, users, group_of))
    return found


def _feeds_outside(op: Op, users: dict, group_of: dict, outputs: set[int]) -> bool:
    """Whether a view's results reach a graph output or a non-fused op (then it must exist outside)."""
    for v in op.results:
        if id(v) in outputs:
            return True
        for u in users.get(id(v), []):
            if id(u) in group_of:
                continue
            if op_class(u.name) != "view" or _feeds_outside(u, users, group_of, outputs):
                return True
    return False


def _is_absorbed_view(op: Op, group: _Group, members: dict, users: dict, outputs: set[int]) -> bool:
    """A view (or constant) all of whose users are in ``group`` (directly or through views)."""
    if op_class(op.name) != "view":
        return False
    for v in op.results:
        if id(v) in outputs:
            return False
        for u in users.get(id(v), []):
            if id(u) in members[id(group)]:
                continue
            if not _is_absorbed_view(u, group, members, users, outputs):
                return False
    return True


def _region(group: _Group, results: list[Value], producer: dict) -> tuple:
    """The region of a group: its ops plus the views/constants they read, and its external inputs."""
    needed: list[Op] = []
    seen: set[int] = set()
    inputs: list[Value] = []
    member_ids = {id(op) for op in group.ops}

    def visit(v: Value) -> None:
        op = producer.get(id(v))
        if op is not None and (id(op) in member_ids or op_class(op.name) == "view"):
            if id(op) not in seen:
                seen.add(id(op))
                for x in op.operands:
                    visit(x)
                needed.append(op)
        elif all(x is not v for x in inputs):
            inputs.append(v)

    for op in group.ops:
        for x in op.operands:
            visit(x)
        if id(op) not in seen:
            seen.add(id(op))
            needed.append(op)
    builder = RegionBuilder([v.type for v in inputs])
    env = {id(v): a for v, a in zip(inputs, builder.args)}
    for op in needed:
        new = builder.append_copy(op, [env[id(x)] for x in op.operands])
        for old, fresh in zip(op.results, new.results):
            env[id(old)] = fresh
    return builder.finish([env[id(v)] for v in results]), inputs


