"""newton-expand: each ``newton`` op as plain ops any backend runs.

Per chunk, the operands of the layers sharing a structure are stacked along a new layer axis
(weights once per plan; rows of one tensor, such as each layer's past keys, as a view). Per
iteration, each structure's layers are evaluated by one batched body (``batch_layers.py``: a
linear becomes a batched matmul), then one ``layer_scan`` kernel computes the prefix sum;
the next iteration reads its rows as views. With ``tol``, each chunk is an ``iterate`` loop
whose body is one iteration and the update's relative norm.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..ir.builder import OpEmitter, RegionBuilder
from ..ir.core import Graph, Op, Region, Value
from ..ir.ops.structural import layer_rows, newton_stacks
from .batch_layers import BatchingError, inline_batched
from .toolkit import ValueMap, rebuild

EXPANDED = frozenset({"newton"})  # the op this pass lowers


def newton_expand(graph: Graph) -> Graph:
    """Lower every ``newton`` op to plain ops: per chunk and iteration, each structure's layers evaluated
    at once over stacked weights (``batch_layers.py``), then one ``layer_scan`` (the prefix sum)."""
    out = OpEmitter()
    values = ValueMap()
    for op in graph.ops:
        op = values.op(op)
        if op.name in EXPANDED:
            values.replace_results(op, _Expansion(op, out).run())
        else:
            out.append(op)
    return rebuild(graph, out.ops, values)


class _Expansion:
    """One ``newton`` op as plain ops (see ``newton_expand``)."""

    def __init__(self, op: Op, out: OpEmitter) -> None:
        self.op, self.out, self.loc = op, out, op.loc
        self.contexts = list(op.operands[1: 1 + op.attrs["contexts"]])
        self.stacks = newton_stacks(op)
        self.rows_of = layer_rows(op.attrs["pattern"])
        self.pattern = op.attrs["pattern"]

    def emit(self, name: str, *operands: Value, **attrs) -> Value:
        return self.out.emit(name, *operands, loc=self.loc, **attrs)

    def run(self) -> list[Value]:
        h, chunk, iters = self.op.operands[0], self.op.attrs["chunk"], self.op.attrs["iters"]
        exports: dict[int, list[Value]] = {}
        for start in range(0, len(self.pattern), chunk):
            layers = list(range(start, min(start + chunk, len(self.pattern))))
            stacks = self.stacked_weights(layers)
            if self.op.attrs["tol"] > 0:
                scan, outs, groups = self.until_converged(layers, stacks, h)
            else:
                scan, outs, groups = self.fixed_iterations(layers, stacks, h, iters)
            for group, values in zip(groups, outs):  # exports come from the last iteration
                for i, l in enumerate(group):
                    exports[l] = [self.emit("reshape", self.emit("slice", v, dim=0, start=i, end=i + 1),
                                            shape=list(v.type.shape[1:])) for v in values[1:]]
            h = self.emit("reshape", self.emit("slice", scan, dim=0, start=len(layers), end=len(layers) + 1),
                          shape=list(h.type.shape))
        return [h, *(v for l in range(len(self.pattern)) for v in exports[l])]

    def fixed_iterations(self, layers: list[int], stacks: dict[int, list[Value]], h: Value,
                         iters: int) -> tuple[Value, list[list[Value]], list[list[int]]]:
        """``iters`` iterations unrolled: (the last layer_scan, the last region results per group, groups)."""
        scan: Value | None = None
        steps = min(iters, len(layers))  # after len(layers) iterations the inputs no longer change
        for k in range(steps):
            used = layers if k == steps - 1 else layers[:-1]  # the last layer's f only feeds the total
            groups = _groups(used, self.pattern)
            outs = [self.evaluate(group, layers, stacks, h, scan) for group in groups]
            scan = self.emit("layer_scan", h, *(o[0] for o in outs), pattern=_scan_pattern(used, groups))
        assert scan is not None
        return scan, outs, groups

    def until_converged(self, layers: list[int], stacks: dict[int, list[Value]],
                        h: Value) -> tuple[Value, list[list[Value]], list[list[int]]]:
        """An ``iterate`` loop: each turn one Newton iteration over all layers and the update's relative norm."""
        groups = _groups(layers, self.pattern)
        rows = self.emit("expand", self.emit("reshape", h, shape=[1, *h.type.shape]),
                         shape=[len(layers) + 1, *h.type.shape])
        invariants = [h, *self.contexts, *(w for g in groups for w in stacks[self.pattern[g[0]]])]
        # the exports are carried too (the last iteration's are the results), seeded with zeros
        seeds = [self.emit("full", shape=[len(g), *v.type.shape], value=0, dtype=v.type.dtype)
                 for g in groups for v in self.op.regions[self.pattern[g[0]]].results[1:]]
        body = RegionBuilder([rows.type, *(s.type for s in seeds), *(v.type for v in invariants)])
        outer, self.out = self.out, body
        try:
            old, b_h = body.args[0], body.args[1 + len(seeds)]
            b_ctx = body.args[2 + len(seeds): 2 + len(seeds) + len(self.contexts)]
            b_w = iter(body.args[2 + len(seeds) + len(self.contexts):])
            local = {self.pattern[g[0]]: [next(b_w) for _ in stacks[self.pattern[g[0]]]] for g in groups}
            saved, self.contexts = self.contexts, list(b_ctx)
            outs = [self.evaluate(group, layers, local, b_h, old) for group in groups]
            self.contexts = saved
            new = self.emit("layer_scan", b_h, *(o[0] for o in outs), pattern=_scan_pattern(layers, groups))
            diff = self.emit("sub", new, old)
            change = self.emit("sum", self.emit("mul", diff, diff), dims=[])
            size = self.emit("sum", self.emit("mul", new, new), dims=[])
            ratio = self.emit("sqrt", self.emit("div", change, size))
            region = body.finish([new, *(v for o in outs for v in o[1:]), ratio])
        finally:
            self.out = outer
        loop = self.out.emit_op("iterate", [rows, *seeds, *invariants],
                                {"carried": 1 + len(seeds), "max_iters": min(self.op.attrs["iters"], len(layers)),
                                 "tol": self.op.attrs["tol"]}, self.loc, [region])
        results = iter(loop.results[1:-1])
        outs = [[loop.results[0]] + [next(results) for _ in self.op.regions[self.pattern[g[0]]].results[1:]]
                for g in groups]
        return loop.results[0], outs, groups

    def stacked_weights(self, layers: Sequence[int]) -> dict[int, list[Value]]:
        """Per structure in the chunk, its layers' rows of the op's stacked operands (views)."""
        out = {}
        for group in _groups(layers, self.pattern):
            b = self.pattern[group[0]]
            first, n = self.rows_of[group[0]], len(group)
            whole = n == self.pattern.count(b)
            out[b] = [s if whole else self.emit("slice", s, dim=0, start=first, end=first + n) for s in self.stacks[b]]
        return out

    def layer_weights(self, l: int) -> list[Value]:
        """Layer ``l``'s own operands: its row of each stack."""
        row = self.rows_of[l]
        return [self.emit("reshape", self.emit("slice", s, dim=0, start=row, end=row + 1), shape=list(s.type.shape[1:]))
                for s in self.stacks[self.pattern[l]]]

    def evaluate(self, group: Sequence[int], layers: Sequence[int], stacks: dict[int, list[Value]], h: Value,
                 scan: Value | None) -> list[Value]:
        """The region's results (f, then exports) for ``group``'s layers at their current inputs, each
        stacked: [len(group), ...]."""
        structure = self.pattern[group[0]]
        region = self.op.regions[structure]
        full = [l for l in layers if self.pattern[l] == structure]
        weights = stacks[structure]
        if len(group) < len(full):  # a prefix of the structure's layers in this chunk
            weights = [self.emit("slice", w, dim=0, start=0, end=len(group)) for w in weights]
        x, x_batched = (h, False) if scan is None else (self.rows(scan, [l - layers[0] for l in group]), True)
        args = [x, *self.contexts, *weights]
        flags = [x_batched] + [False] * len(self.contexts) + [True] * len(weights)
        try:
            return inline_batched(region, args, flags, len(group), self.out)
        except BatchingError:  # one layer at a time, then stacked
            per_layer = []
            for l in group:
                xi = h if scan is None else self.emit("reshape", self.rows(scan, [l - layers[0]]), shape=list(h.type.shape))
                per_layer.append(_inline(region, [xi, *self.contexts, *self.layer_weights(l)], self.out))
            return [self.emit("stack", *values, dim=0) for values in zip(*per_layer)]

    def rows(self, scan: Value, rows: Sequence[int]) -> Value:
        """Rows of a ``layer_scan`` result: a strided slice (a view) when they are evenly spaced."""
        step = rows[1] - rows[0] if len(rows) > 1 else 1
        if all(b - a == step for a, b in zip(rows, rows[1:])) and step > 0:
            return self.emit("slice", scan, dim=0, start=rows[0], end=rows[-1] + 1, step=step)
        pieces = [self.emit("slice", scan, dim=0, start=r, end=r + 1) for r in rows]
        return self.emit("concat", *pieces, dim=0)


def _groups(layers: Sequence[int], pattern: Sequence[int]) -> list[list[int]]:
    """``layers`` grouped by structure, groups in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for l in layers:
        groups.setdefault(pattern[l], []).append(l)
    return list(groups.values())


def _scan_pattern(layers: Sequence[int], groups: Sequence[Sequence[int]]) -> list[int]:
    """Per layer, which group's deltas (a ``layer_scan`` operand) it reads."""
    return [next(g for g, group in enumerate(groups) if l in group) for l in layers]


def _inline(region: Region, args: Sequence[Value], out: OpEmitter) -> list[Value]:
    env = {id(a): v for a, v in zip(region.args, args)}
    for op in region.ops[:-1]:
        new = out.append_copy(op, [env[id(v)] for v in op.operands])
        env.update({id(o): n for o, n in zip(op.results, new.results)})
    return [env[id(v)] for v in region.results]
