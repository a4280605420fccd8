"""Division by a row constant as multiplication by its reciprocal, where that is safe (CPU kernels).

Softmax divides every element by the row's sum, layer norm by the row's deviation: a ``div`` whose
divisor is a value computed before the element loop. A vector division costs several times a
multiplication, and LLVM may not replace ``x / d`` by ``x * (1 / d)`` (it rounds differently), so
the printer versions such a loop: ``inv = 1 / d``; when ``d`` lies where ``1 / d`` is a normal
number the loop multiplies by ``inv`` (within 1.5 ulp of the division, as PyTorch's own softmax
computes it), otherwise (zero, subnormal, huge, inf, NaN) it runs the original divisions.

Versioning copies the loop, and Numba's compile time grows faster than linearly with a kernel's
length, so only short loops are versioned (``MAX_VERSIONED_STATEMENTS``): in a long body (a fused
depthwise convolution with its batch norm and SiLU) one division is a small share of the work.
"""
from __future__ import annotations

from ..ir.dtypes import DType
from .kernel import Call, Expr, Let, Load, Loop, Reduce, Var, body_exprs, map_body, walk

# |d| strictly inside these bounds: 1/d is a normal, finite number
SAFE_RANGE = {DType.f32: (1.2e-38, 8.5e37), DType.f64: (2.3e-308, 4.4e307)}
MAX_VERSIONED_STATEMENTS = 32


def invariant_divisors(loop: Loop) -> list[Var]:
    """The divisors worth a versioned copy of ``loop``: none when the loop is long."""
    if _statements(loop.body) > MAX_VERSIONED_STATEMENTS:
        return []
    return _invariant_divisors(loop)


def _statements(body: tuple) -> int:
    return sum(1 + (_statements(s.body) if isinstance(s, (Loop, Reduce)) else 0) for s in body)


def _invariant_divisors(loop: Loop) -> list[Var]:
    """Float divisors in ``loop`` that are variables bound before it (a row's reductions and lets)."""
    inner = {loop.var} | _bound_names(loop.body)
    found: list[Var] = []
    for expr in body_exprs(loop.body):
        for e in walk(expr):
            if isinstance(e, Call) and e.op == "div" and e.dtype in SAFE_RANGE:
                d = e.args[1]
                if isinstance(d, Var) and d.name not in inner and d.dtype == e.dtype and d not in found:
                    found.append(d)
    return found


def inverse_name(d: Var) -> str:
    return f"{d.name}_inv"


def multiply_by_inverses(body: tuple, divisors: list[Var]) -> tuple:
    """``body`` with each ``a / d`` (d in ``divisors``) as ``a * d_inv``."""
    names = {d.name for d in divisors}

    def swap(e: Expr) -> Expr:
        if isinstance(e, Call):
            args = tuple(swap(a) for a in e.args)
            if e.op == "div" and isinstance(e.args[1], Var) and e.args[1].name in names:
                return Call(e.dtype, "mul", (args[0], Var(e.dtype, inverse_name(e.args[1]))), e.attrs)
            return Call(e.dtype, e.op, args, e.attrs)
        if isinstance(e, Load):
            return Load(e.dtype, e.buffer, swap(e.index))
        return e

    return map_body(body, swap)


def _bound_names(body: tuple) -> set[str]:
    names: set[str] = set()
    for s in body:
        if isinstance(s, Let):
            names.add(s.name)
        elif isinstance(s, Reduce):
            names |= {s.acc, s.var} | _bound_names(s.body)
        elif isinstance(s, Loop):
            names |= {s.var} | _bound_names(s.body)
    return names
