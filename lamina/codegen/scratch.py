"""CPU row kernels: move transcendental maps out of reduction loops into a per-thread scratch row.

LLVM vectorizes a plain map and a plain reduction, but not a reduction whose body holds
an inlined ``exp32``. So ``acc += exp(x[r] - m)`` becomes ``for r: s0[r] = exp(x[r] - m)``
then ``acc += s0[r]``; the element loop then reads ``s0[j]`` instead of computing ``exp``
again. Softmax thereby computes each exp once instead of twice.
"""
from __future__ import annotations

from dataclasses import replace

from .kernel import I64, Buffer, Call, Expr, Kernel, Let, Load, Loop, Reduce, Store, Var, inline_lets, walk

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


def use_scratch_rows(kernel: Kernel) -> Kernel:
    """The kernel with heavy reduction bodies materialised into scratch rows (row kernels only)."""
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
                body.append(Loop(stmt.var, stmt.extent, stmt.body + (_store(name, stmt.var, stmt.value),)))
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
