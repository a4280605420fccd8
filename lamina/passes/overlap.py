"""overlap{chunks=C | split=S | norm=1 | split=S,norm=1}: hide a sharded graph's all-reduces behind compute.

After ``shard``, each sublayer ends in ``all_reduce(linear(x, W))``, and every rank waits for it. This pass
starts collectives early and waits for them late (``*_start`` / ``wait`` ops), with compute between:

- ``chunks=C`` (T3): the row linear's output rows (its tokens) in C chunks, each chunk's all-reduce
  started as soon as the chunk is written, so chunk i's communication runs while chunk i+1 multiplies;
  the chunks are joined after their waits. The token axis must split into C equal parts.
- ``split=2`` (TokenWeave): the batch in two halves that run each sublayer one after the other, so
  one half's all-reduce runs while the other half computes its sublayer. The halves are joined after
  the stack. ``split=S`` cuts S pieces (S must divide the batch): a piece whose communication is a chain
  of collectives (with ``norm=1``) has S - 1 other pieces' compute to hide it behind.
- ``norm=1`` (sequence parallelism, TokenWeave's all-reduce fused with the norm): the stream split by
  tokens across the ranks; each all-reduce becomes a reduce-scatter, the residual adds and norms run on
  this rank's tokens, and the norm's output is all-gathered for the next column linears. With ``split=S``
  as well, the pieces run on the token-split stream, and their reduce-scatters and all-gathers are started.

Then a scheduling step (``schedule``) reorders the graph, keeping every dependency: a ``*_start`` as soon
as its operand is ready, a ``wait`` only when nothing else can run. ``lamina dump`` shows the order. The
result equals the unsplit graph's up to float rounding (the row linear of a chunk is the same sum).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..ir.builder import OpEmitter
from ..ir.core import Graph, Op, Value
from ..ir.errors import LaminaError
from ..ir.ops.collective import kind_of
from .layers import find_chains
from .rewrite import remove_dead


class OverlapError(LaminaError, ValueError):
    """Options or a graph the overlap pass cannot use; the message names the option or the op."""


@dataclass(frozen=True)
class OverlapOptions:
    """chunks: T3's chunks of each row linear (>= 2); split: TokenWeave's batch pieces (>= 2); norm: 1 for the
    sequence-parallel stream (reduce-scatter, norms on the token shard, all-gather); split and norm combine."""

    chunks: int = 0
    split: int = 0
    norm: int = 0

    def __post_init__(self) -> None:
        if self.chunks and (self.split or self.norm):
            raise OverlapError("overlap: chunks=C goes alone; split=S and norm=1 go alone or together")
        if not self.chunks and not self.split and not self.norm:
            raise OverlapError("overlap: give chunks=C (chunked row GEMMs), split=S (batch pieces) or norm=1 "
                               "(sequence-parallel norms)")
        if self.norm not in (0, 1):
            raise OverlapError(f"overlap: norm={self.norm} must be 1 (or left out)")
        if self.chunks and self.chunks < 2:
            raise OverlapError(f"overlap: chunks={self.chunks} must be at least 2")
        if self.split and self.split < 2:
            raise OverlapError(f"overlap: split={self.split} must be at least 2 (pieces of the batch)")


def overlap(graph: Graph, options: OverlapOptions = OverlapOptions(chunks=2)) -> Graph:
    """Start ``graph``'s all-reduces early and wait for them late (see the module doc)."""
    reduces = [op for op in graph.ops if op.name == "all_reduce"]
    if not reduces:
        raise OverlapError(f"overlap: graph @{graph.name} has no all_reduce to overlap; run shard{{tp=N}} first")
    if options.chunks:
        return schedule(_chunked(graph, reduces, options.chunks))
    if options.norm:
        graph = _sequence_parallel(graph, reduces)
    return schedule(_pieces(graph, options.split) if options.split else graph)


def _chunked(graph: Graph, reduces: Sequence[Op], chunks: int) -> Graph:
    producer = {r: op for op in graph.ops for r in op.results}
    targets = {id(op) for op in reduces}
    out, values = OpEmitter(), {}
    for op in graph.ops:
        operands = [values.get(v, v) for v in op.operands]
        if id(op) not in targets:
            out.append(op.replace(operands=tuple(operands)))
            continue
        linear = producer.get(op.operands[0])
        if linear is None or linear.name != "linear":
            raise OverlapError(f"overlap{{chunks={chunks}}}: {op.describe()} does not reduce a linear's output")
        x = values.get(linear.operands[0], linear.operands[0])
        axis = x.type.rank - 2 if x.type.rank >= 2 else 0
        rows = x.type.shape[axis]
        if not isinstance(rows, int) or rows % chunks:
            raise OverlapError(f"overlap{{chunks={chunks}}}: {linear.describe()} has {rows} rows (tokens), which do "
                               f"not split into {chunks} equal chunks; use a static token count that chunks divides")
        size = rows // chunks
        pending = []
        for i in range(chunks):
            part = out.emit("slice", x, dim=axis, start=i * size, end=(i + 1) * size, loc=linear.loc)
            product = out.emit("linear", part, *(values.get(v, v) for v in linear.operands[1:]), loc=linear.loc)
            pending.append(out.emit("all_reduce_start", product, group=op.attrs["group"], loc=op.loc))
        done = [out.emit("wait", p, loc=op.loc) for p in pending]
        values[op.results[0]] = out.emit("concat", *done, dim=axis, loc=op.loc)
    ops = remove_dead(out.ops, [values.get(v, v) for v in graph.outputs])
    note = f"overlap: {len(reduces)} all-reduces in {chunks} chunks each, started as each chunk is written"
    return graph.replace(ops=tuple(ops), outputs=tuple(values.get(v, v) for v in graph.outputs),
                         history=graph.history + (note,))


def _pieces(graph: Graph, n: int) -> Graph:
    """The layer stack's ops ``n`` times, once per ``n``-th of the batch (see the module doc)."""
    what = f"overlap{{split={n}}}"
    chains = find_chains(graph, "sublayer", min_layers=1)
    chain = max(chains, key=lambda c: len(c.layers)) if chains else None
    if chain is None:
        raise OverlapError(f"{what}: graph @{graph.name} has no residual layer stack to split")
    stream = chain.layers[0].stream
    batch = stream.type.shape[0] if stream.type.rank else None
    if not isinstance(batch, int) or batch < n or batch % n:
        raise OverlapError(f"{what}: the stream {stream.type} needs a static batch (its dim 0) that {n} divides, to "
                           f"run in {n} pieces; use overlap{{chunks=C}} for one sequence")
    inside = {id(op) for layer in chain.layers for op in layer.ops}
    ends = {layer.out for layer in chain.layers}
    end = chain.layers[-1].out
    out = OpEmitter()
    pieces: list[dict[Value, Value]] = [{} for _ in range(n)]
    outside: dict[Value, Value] = {}
    pending: list[Op] = []  # the current sublayer's ops: emitted for each piece in turn
    size = batch // n
    for op in graph.ops:
        if id(op) not in inside:
            if pieces[0] and any(v in pieces[0] and v not in outside for v in op.operands):
                raise OverlapError(f"{what}: {op.describe()} reads a layer's value outside the stack "
                                   "(a KV cache's entries): not split yet")
            out.append(op.replace(operands=tuple(outside.get(v, v) for v in op.operands)))
            continue
        if not pieces[0]:  # the stream in pieces, at the first layer op
            for h in range(n):
                pieces[h][stream] = out.emit("slice", stream, dim=0, start=h * size, end=(h + 1) * size)
        pending.append(op)
        if not any(r in ends for r in op.results):
            continue
        for piece in pieces:  # one piece's sublayer, then the next's: it computes while the others communicate
            for p in pending:
                _piece_op(out, p, piece, batch, n, what)
        pending = []
        if end in op.results:
            outside[end] = out.emit("concat", *(piece[end] for piece in pieces), dim=0)
    note = f"overlap: the batch of {batch} in {n} pieces through {len(chain.layers)} sublayers"
    return graph.replace(ops=tuple(out.ops), outputs=tuple(outside.get(v, v) for v in graph.outputs),
                         history=graph.history + (note,))


def _piece_op(out: OpEmitter, op: Op, values: dict[Value, Value], batch: int, n: int, what: str) -> None:
    """``op`` on one ``n``-th of the batch: operands of that piece, shapes that name the batch divided."""
    operands = [values.get(v, v) for v in op.operands]
    attrs = dict(op.attrs)
    for key in ("shape",):
        if key in attrs and attrs[key] and attrs[key][0] == batch:
            attrs[key] = [batch // n, *attrs[key][1:]]
    started = kind_of(op.name) is not None and not _is_start(op)  # a blocking collective
    name = f"{op.name}_start" if started else op.name
    try:
        new = out.emit_op(name, operands, attrs, op.loc, op.regions)
    except Exception as e:
        raise OverlapError(f"{what}: {op.describe()} does not run on 1/{n} of the batch ({e})") from None
    results = list(new.results)
    if started:
        results = [out.emit("wait", new.results[0], loc=op.loc)]
    for old, fresh in zip(op.results, results):
        if old.type.rank and old.type.shape[0] == batch and fresh.type.shape[0] != batch // n:
            raise OverlapError(f"{what}: {op.describe()} mixes the batch's rows")
        values[old] = fresh


PER_TOKEN = ("layer_norm", "rms_norm")  # and elementwise ops, and reductions over the last axis only


def _sequence_parallel(graph: Graph, reduces: Sequence[Op]) -> Graph:
    """The layer stack's stream split by tokens across the ranks (Megatron's sequence parallelism): each
    row linear's all-reduce becomes a reduce-scatter, the residual adds and norms run on this rank's tokens,
    and the norm's output is all-gathered for the column linears. The stream is sliced at the stack's start
    (``rank_slice``, no communication) and gathered at its end. Communication is the same, and half of it
    moves after the norm, whose work is split too."""
    from ..ir.ops import category
    from ..ir.opdef import Category

    chains = find_chains(graph, "sublayer", min_layers=1)
    chain = max(chains, key=lambda c: len(c.layers)) if chains else None
    if chain is None:
        raise OverlapError(f"overlap{{norm=1}}: graph @{graph.name} has no residual layer stack")
    group = reduces[0].attrs["group"]
    stream = chain.layers[0].stream
    axis = stream.type.rank - 2
    tokens = stream.type.shape[axis] if axis >= 0 else None
    if not isinstance(tokens, int) or tokens % group:
        raise OverlapError(f"overlap{{norm=1}}: the stream {stream.type} needs a static token count (dim {axis}) "
                           f"that tp={group} divides")
    inside = {id(op): layer for layer in chain.layers for op in layer.ops}
    if any(not any(op.name == "all_reduce" for op in layer.ops) for layer in chain.layers):
        raise OverlapError("overlap{norm=1}: every sublayer of the stack must end in an all-reduce (run shard first)")
    end = chain.layers[-1].out
    out = OpEmitter()
    part: dict[Value, Value] = {}   # stream-side value -> this rank's tokens of it
    whole: dict[Value, Value] = {}  # value -> its replacement computed on all tokens
    gathered: dict[Value, Value] = {}
    for op in graph.ops:
        if id(op) not in inside:
            operands = [whole.get(v, v) for v in op.operands]
            out.append(op.replace(operands=tuple(operands)))
            continue
        if not part:
            part[stream] = out.emit("rank_slice", stream, group=group, dim=axis)
        if op.name == "all_reduce":
            part[op.results[0]] = out.emit("reduce_scatter", whole.get(op.operands[0], op.operands[0]), group=group,
                                           dim=axis, loc=op.loc)
        elif any(v in part for v in op.operands) and op.name != "linear":
            reduced = op.attrs.get("dims", [])
            per_token = (category(op.name) is Category.ELEMENTWISE or op.name in PER_TOKEN
                         or (category(op.name) is Category.REDUCTION and axis not in [d % op.operands[0].type.rank
                                                                                    for d in reduced]))
            if not per_token or any(v not in part and v in whole for v in op.operands):
                raise OverlapError(f"overlap{{norm=1}}: {op.describe()} reads the token-split stream and is not "
                                   "per token")
            new = out.emit_op(op.name, [part.get(v, v) for v in op.operands], dict(op.attrs), op.loc)
            part.update(zip(op.results, new.results))
        else:  # a column linear reads the norm's output on all tokens, and what follows it runs on all tokens
            operands = []
            for v in op.operands:
                if v in part:
                    if v not in gathered:
                        gathered[v] = out.emit("all_gather", part[v], group=group, dim=axis, loc=op.loc)
                    operands.append(gathered[v])
                else:
                    operands.append(whole.get(v, v))
            new = out.emit_op(op.name, operands, dict(op.attrs), op.loc, op.regions)
            whole.update(zip(op.results, new.results))
        if end in op.results:
            whole[end] = out.emit("all_gather", part[end], group=group, dim=axis, loc=op.loc)
    note = (f"overlap: the stream of {len(chain.layers)} sublayers split by tokens across {group} ranks "
            "(reduce-scatter, norms on the shard, all-gather)")
    return graph.replace(ops=tuple(out.ops), outputs=tuple(whole.get(v, v) for v in graph.outputs),
                         history=graph.history + (note,))


def schedule(graph: Graph) -> Graph:
    """``graph``'s ops reordered, dependencies kept: started collectives as early as their operands allow,
    waits as late as possible (only when nothing else is ready; then the wait on the collective started
    first), everything else in its order."""
    ops = list(graph.ops)
    made = {r: i for i, op in enumerate(ops) for r in op.results}
    needs = [{made[v] for v in op.operands if v in made} for op in ops]
    users: list[list[int]] = [[] for _ in ops]
    for i, deps in enumerate(needs):
        for d in deps:
            users[d].append(i)
    waiting = [len(d) for d in needs]
    ready = {i for i, n in enumerate(waiting) if n == 0}
    order: list[int] = []
    placed: dict[int, int] = {}  # op index -> its position in the new order

    def oldest_in_flight(wait: int) -> int:  # a wait on the collective started first: the likeliest done
        return placed.get(made.get(ops[wait].operands[0]), len(ops))

    while ready:
        starts = [i for i in ready if _is_start(ops[i])]
        others = [i for i in ready if ops[i].name != "wait" and not _is_start(ops[i])]
        waits = [i for i in ready if ops[i].name == "wait"]
        pick = (min(starts) if starts else min(others) if others
                else min(waits, key=lambda i: (oldest_in_flight(i), i)) if waits else min(ready))
        ready.remove(pick)
        placed[pick] = len(order)
        order.append(pick)
        for u in users[pick]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.add(u)
    return graph.replace(ops=tuple(ops[i] for i in order))


def _is_start(op: Op) -> bool:
    return op.name.endswith("_start") and kind_of(op.name) is not None
