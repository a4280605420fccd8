"""CPU row kernels: move transcendental maps out of reduction loops into a per-thread scratch row.

LLVM vectorizes a plain map and a plain reduction, but not a reduction whose body holds
an inlined ``exp32``. So ``acc += exp(x[r] - m)`` becomes ``for r: s0[r] = exp(x[r] - m)``
then ``acc += s0[r]``; the element loop then reads ``s0[j]`` instead of computing ``exp``
again. Softmax thereby computes each exp once instead of twice.

The C printer vectorizes a sum whose body holds ``exp`` (its lanes are written out,
``cpu_c.py``), so for C the row is filled by the reduction itself (``fill_in_reduction``):
``s0[r] = exp(x[r] - m); acc += s0[r]`` in one loop, one pass over the row fewer. Not where the
loop divides its index (a window's ``r // W``): a loop of its own fills that row, as two nested
loops without the division (``loop_nest.py``).
"""
from __future__ import annotations

from dataclasses import replace

from .loop_nest import row_divisor
from .kernel import I64, Buffer, Call, Expr, Kernel, Let, Load, Loop, Reduce, Store, Var, body_exprs, inline_lets, walk

HEAVY = frozenset({"exp", "tanh", "erf", "log", "sin", "cos", "pow", "sqrt"})


def _rename(expr: Expr, old: str, new: str) -> Expr:
    if isinstance(expr, Var) and expr.name == old:
        return replace(expr, name=new)  # a LoopVar keeps its extent
    if isinstance(expr, Call):
        return Call(expr.dtype, expr.op, tuple(_rename(a, old, new) for a in expr.args), expr.attrs)
    if isinstance(expr, Load):
        return Load(expr.dtype, expr.buffer, _rename(expr.index, old, new))
    return expr


def _local_lets(body: tuple) -> dict[str, Expr]:
    return {s.name: s.value for s in body if isinstance(s, Let)}


def use_scratch_rows(kernel: Kernel, fill_in_reduction: bool = False) -> Kernel:
    """The kernel with heavy reduction bodies materialised into scratch rows (row kernels only); a
    sum fills its row as it goes where ``fill_in_reduction`` (else a loop before it does)."""
    if kernel.kind != "row" or kernel.row_extent is None:
        return kernel
    body, scratch, made = [], [], {}  # made: inlined expression in r -> scratch name
    for stmt in kernel.body:
        if isinstance(stmt, Reduce):
            value = inline_lets(stmt.value, _local_lets(stmt.body))
            if any(isinstance(e, Call) and e.op in HEAVY for e in walk(value)):
                name = f"s{len(scratch)}"
                scratch.append(Buffer(name, stmt.dtype, stmt.extent))
                made[value] = name
                fill = stmt.body + (_store(name, stmt.var, stmt.value),)
                if fill_in_reduction and stmt.kind == "sum" and row_divisor(Loop(stmt.var, stmt.extent, fill)) is None:
                    stmt = replace(stmt, body=fill)
                else:
                    body.append(Loop(stmt.var, stmt.extent, fill))
                    stmt = Reduce(stmt.acc, stmt.kind, stmt.dtype, stmt.var, stmt.extent, (),
                                  Load(stmt.dtype, name, Var(I64, stmt.var)))
        elif isinstance(stmt, Loop) and made:
            lets = _local_lets(stmt.body)
            new_body = []
            for s in stmt.body:
                if isinstance(s, Let):
                    key = _rename(inline_lets(s.value, lets), stmt.var, "r")
                    if key in made:
                        s = Let(s.name, Load(s.value.dtype, made[key], Var(I64, stmt.var)))
                new_body.append(s)
            stmt = Loop(stmt.var, stmt.extent, tuple(new_body))
        body.append(stmt)
    if not scratch:
        return kernel
    return replace(kernel, body=tuple(body), scratch=tuple(scratch))


def _store(name: str, var: str, value: Expr) -> Store:
    return Store(name, Var(I64, var), value)


def rows_in_outputs(kernel: Kernel) -> Kernel:
    """A kernel whose reductions fill their scratch rows (``fill_in_reduction``), with those rows
    placed better: a row no later statement reads is not filled at all (log_softmax's exps); a row
    read only by the kernel's last loop, each element where that loop then writes an output of the
    row's dtype, is that output's row (softmax: the sum writes each exp to the output, the loop
    scales it in place). No scratch memory then, and the output is written by the pass whose
    arithmetic hides its memory traffic. Nothing after the sum reads memory but that row, so an
    output that is also the kernel's input (an in-place update) is read before it is written, as
    before."""
    body, scratch = list(kernel.body), list(kernel.scratch)
    for row in kernel.scratch:
        fills = [i for i, s in enumerate(body) if isinstance(s, Reduce) and any(_stores(t, row.name) for t in s.body)]
        readers = [i for i, s in enumerate(body) if any(_reads(e, row.name) for e in body_exprs((s,)))]
        if len(fills) != 1 or fills[0] in readers:
            continue
        fill = body[fills[0]]
        if not readers:
            body[fills[0]] = replace(fill, body=tuple(t for t in fill.body if not _stores(t, row.name)))
        else:
            between = body[fills[0] + 1:-1]
            reads_between = any(isinstance(e, Load) for x in body_exprs(tuple(between)) for e in walk(x))
            last_reads_row = readers == [len(body) - 1] and not reads_between
            target = _output_row(kernel.buffers, body, row, fill) if last_reads_row else None
            if target is None:
                continue
            out, index = target
            last = body[-1]
            body[fills[0]] = replace(fill, body=tuple(
                Store(out, _rename(index, last.var, fill.var), t.value) if _stores(t, row.name) else t
                for t in fill.body))
            body[-1] = replace(last, body=tuple(
                Let(s.name, _moved(s.value, row.name, out, index)) if isinstance(s, Let) else
                replace(s, value=_moved(s.value, row.name, out, index)) for s in last.body))
        scratch.remove(row)
    if len(scratch) == len(kernel.scratch):
        return kernel
    return replace(kernel, body=tuple(body), scratch=tuple(scratch))


def _stores(s, name: str) -> bool:
    return isinstance(s, Store) and s.buffer == name


def _reads(expr: Expr, name: str) -> bool:
    return any(isinstance(e, Load) and e.buffer == name for e in walk(expr))


def _output_row(buffers: tuple[Buffer, ...], body: list, row: Buffer, fill: Reduce) -> tuple[str, Expr] | None:
    """(output, its index in the loop's variable) where ``body``'s last loop reads ``row`` only at its own
    element ``j`` and nothing else, and stores once, to an output of the row's dtype at ``base + j`` that
    nothing in ``body`` reads (one element per ``j``, so the fill writes each output element once); else
    None."""
    loop = body[-1]
    if not isinstance(loop, Loop) or loop.extent != fill.extent or not all(isinstance(s, (Let, Store)) for s in loop.body):
        return None
    stores = [s for s in loop.body if isinstance(s, Store)]
    outputs = {b.name: b for b in buffers if b.output}
    if len(stores) != 1 or stores[0].buffer not in outputs or outputs[stores[0].buffer].dtype != row.dtype:
        return None
    loads = [e for e in body_exprs(loop.body) for e in walk(e) if isinstance(e, Load)]
    if any(e.buffer != row.name or not (isinstance(e.index, Var) and e.index.name == loop.var) for e in loads):
        return None
    if any(_reads(e, stores[0].buffer) for e in body_exprs(tuple(body))):
        return None
    index = inline_lets(stores[0].index, _local_lets(loop.body))
    if not (isinstance(index, Call) and index.op == "add" and len(index.args) == 2):
        return None
    own = [a for a in index.args if isinstance(a, Var) and a.name == loop.var]
    rest = [a for a in index.args if not (isinstance(a, Var) and a.name == loop.var)]
    if len(own) != 1 or any(isinstance(e, Load) or isinstance(e, Var) and e.name == loop.var for e in walk(rest[0])):
        return None  # the row's base reads nothing: the fill computes it before the loop would
    return stores[0].buffer, index


def _moved(expr: Expr, row: str, out: str, index: Expr) -> Expr:
    """``expr`` reading ``out`` at ``index`` where it read ``row``."""
    if isinstance(expr, Load) and expr.buffer == row:
        return Load(expr.dtype, out, index)
    if isinstance(expr, Call):
        return Call(expr.dtype, expr.op, tuple(_moved(a, row, out, index) for a in expr.args), expr.attrs)
    return expr
