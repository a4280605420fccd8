"""Kernel IR: one fused region as loops, scalar expressions, loads, reductions and stores.

A Kernel runs ``body`` once per outer index ``o`` in ``[0, outer)`` (parallel). The body
is statements: ``Let`` (a named scalar), ``Reduce`` (a serial loop folding a value into an
accumulator), ``Loop`` (a serial loop over the inner index of a row kernel) and ``Store``.
Buffers are flat, contiguous arrays; every view (reshape, permute, expand, slice, split,
broadcast) has been folded into the integer index expressions of loads.

Checked scalar ops (``CHECKED``: an index that may be out of range, an integer division that
may divide by zero) record a failure in the kernel's error buffer ``err`` (``[check, value,
size]``, check numbered from 1 into ``Kernel.checks``) and go on with a safe value; the
runtime raises the check's error after the launch. A check the plan can decide from sizes
alone is an ``IndexAssumption`` instead, tested once when the plan is built.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..ir.dtypes import DType


# ---- scalar expressions ---------------------------------------------------------------------

def _hash_once(cls: type) -> type:
    """``cls`` with its dataclass hash computed once per object: expressions are trees used as dict
    keys all through codegen, and the generated hash walks the whole tree on every lookup (lowering
    MobileNetV2 spent a third of its time hashing). The cached value stays out of pickles and copies
    (string hashes differ between processes)."""
    compute = cls.__hash__

    def __hash__(self: Any) -> int:
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = compute(self)
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self: Any) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    cls.__hash__ = __hash__  # type: ignore[method-assign]
    cls.__getstate__ = __getstate__  # type: ignore[attr-defined]
    return cls


@_hash_once
@dataclass(frozen=True)
class Expr:
    dtype: DType


@_hash_once
@dataclass(frozen=True)
class Const(Expr):
    value: Any


@_hash_once
@dataclass(frozen=True)
class Var(Expr):
    name: str


@_hash_once
@dataclass(frozen=True)
class LoopVar(Var):
    """A loop index known to lie in ``[0, extent)`` (a row's inner loop of static length), so index
    arithmetic on it can be simplified: ``(o * 96 + r) // 96`` is ``o`` and ``% 96`` is ``r``."""

    extent: int = 0


def bounded(var: Var, extent: Expr) -> Var:
    """``var`` as a LoopVar when the loop's ``extent`` is a constant."""
    return LoopVar(var.dtype, var.name, int(extent.value)) if isinstance(extent, Const) else var


@_hash_once
@dataclass(frozen=True)
class Load(Expr):
    buffer: str
    index: Expr


@_hash_once
@dataclass(frozen=True)
class Call(Expr):
    """A scalar op: a registry elementwise op name (``add``, ``exp``, ``where``, ``cast`` ...) or an
    index op (``floordiv``, ``mod``, ``min``, ``max``)."""

    op: str
    args: tuple[Expr, ...]
    attrs: tuple[tuple[str, Any], ...] = ()

    def attr(self, key: str) -> Any:
        return dict(self.attrs)[key]


# ---- statements ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Let:
    name: str
    value: Expr


@dataclass(frozen=True)
class Store:
    buffer: str
    index: Expr
    value: Expr


@dataclass(frozen=True)
class Reduce:
    """``acc = init; for var in range(extent): body; acc = combine(acc, value)``; kind: sum, max, min."""

    acc: str
    kind: str
    dtype: DType
    var: str
    extent: Expr
    body: tuple[Any, ...]
    value: Expr


def reduction_identity(kind: str, dtype: DType) -> float:
    """Where a ``Reduce`` of ``kind`` starts: 0 for sums, -inf / inf for float max / min, and the
    int64 extremes for integer max / min."""
    if kind == "sum":
        return 0
    if dtype.is_float:
        return -math.inf if kind == "max" else math.inf
    return -(2 ** 63) if kind == "max" else 2 ** 63 - 1


@dataclass(frozen=True)
class Loop:
    var: str
    extent: Expr
    body: tuple[Any, ...]


Stmt = Let | Store | Reduce | Loop

# scalar ops that record a failure in the error buffer: checked_index(i, n, check) {wrap},
# int_floor_divide / int_remainder / int_fmod(a, b, check)
CHECKED = frozenset({"checked_index", "int_floor_divide", "int_remainder", "int_fmod"})
ERROR_BUFFER = "err"


@dataclass(frozen=True)
class KernelCheck:
    """What a failed check means: ``kind`` is ``index`` or ``zero_division``; ``what`` names the op;
    ``wrap``: negative indices count from the end."""

    kind: str
    what: str
    wrap: bool = False


@dataclass(frozen=True)
class IndexAssumption:
    """Indices known to lie in ``[lo, hi]`` (exact bounds, in size symbols) must fit a dim of ``size``;
    negative ones wrap when ``wrap``. The plan tests it once its sizes are known."""

    lo: Any
    hi: Any
    size: Any
    wrap: bool
    what: str


@dataclass(frozen=True)
class Buffer:
    """A kernel parameter: a flat contiguous array of ``size`` elements."""

    name: str
    dtype: DType
    size: Expr
    output: bool = False


@dataclass(frozen=True)
class Kernel:
    """A parallel loop ``for o in range(outer): body``; ``kind`` is ``pointwise`` or ``row``.

    ``row_extent`` is the inner size of a row kernel (what its block reduces over on a GPU).
    ``sizes`` are symbolic dims passed as i64 arguments after the buffers; ``params``, when the
    kernel is shared by uses of other sizes, the constants each use passes after them.
    """

    name: str
    kind: str
    buffers: tuple[Buffer, ...]
    sizes: tuple[str, ...]
    outer: Expr
    body: tuple[Stmt, ...]
    row_extent: Expr | None = None
    source_ops: tuple[str, ...] = field(default=(), compare=False)
    scratch: tuple[Buffer, ...] = ()  # per-thread row buffers (see codegen/scratch.py)
    checks: tuple[KernelCheck, ...] = ()  # check k (from 1) is checks[k - 1]; the last buffer is ``err``
    assumptions: tuple[IndexAssumption, ...] = field(default=(), compare=False, repr=False)
    params: tuple[str, ...] = ()  # lifted constants, arguments after the sizes (codegen/shared_kernels.py)

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if not b.output)

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        return tuple(b for b in self.buffers if b.output)


# ---- helpers for building index arithmetic ---------------------------------------------------

I64 = DType.i64


def const(v: int) -> Const:
    return Const(I64, int(v))


def _zero(e: Expr) -> bool:
    """Whether ``e`` is 0 wherever it is read: the constant, or the index of a loop of one iteration (a
    row kernel over rows of one element: ``o * 1 + j`` is the row ``o``, as its reductions are read)."""
    return (isinstance(e, Const) and e.value == 0) or (isinstance(e, LoopVar) and e.extent == 1)


def add(a: Expr, b: Expr) -> Expr:
    if _zero(a):
        return b
    if _zero(b):
        return a
    if isinstance(a, Const) and isinstance(b, Const):
        return const(a.value + b.value)
    return Call(I64, "add", (a, b))


def canonical(e: Expr) -> Expr:
    """``e`` rebuilt bottom-up with the simplifications of ``add``/``mul``/``floordiv``/``mod``, and
    ``(x // c) * c + x % c`` read as ``x`` (``_recombined``): one spelling for index expressions that are
    equal, to compare them (a row kernel checks that a reduction is read at its own row). Kernels keep
    the spelling they were built with: recombined, a padded depthwise window's rows nest and split into
    pieces instead of versioning on the row's guard, 8-16% slower in MobileNetV2 at batch 8."""
    if not isinstance(e, Call) or e.op not in _INDEX_OPS:
        return e
    a, b = (canonical(x) for x in e.args)
    if e.op == "add":
        whole = _recombined(a, b)
        return whole if whole is not None else add(a, b)
    return _INDEX_OPS[e.op](a, b)


def _recombined(a: Expr, b: Expr) -> Expr | None:
    """``x`` for ``(x // c) * c + x % c`` in either order, where ``x`` may itself be ``y // k`` and ``x // c``
    then reads ``y // (k * c)`` (identities under C's truncating division by positive constants and
    Python's flooring one alike): a flat index unravelled and linearized again (a row kernel reading a
    reduction back through a reshape that puts the reduced axes back as size 1) reads the row ``o``
    itself, which the row check compares by its spelling."""
    for product, rest in ((a, b), (b, a)):
        if not (isinstance(product, Call) and product.op == "mul" and isinstance(rest, Call) and rest.op == "mod"):
            continue
        x, c = rest.args
        if not (isinstance(c, Const) and c.value > 0):
            continue
        base, k = _quotient(x)
        for q, factor in (product.args, product.args[::-1]):
            if factor == c and isinstance(q, Call) and q.op == "floordiv" and _quotient(q) == (base, k * c.value):
                return x
    return None


def _quotient(e: Expr) -> tuple[Expr, int]:
    """``(y, k)`` with ``e`` = ``y // k`` for a positive constant ``k`` (``(e, 1)`` otherwise), nested quotients
    merged: ``(y // 2) // 16`` is ``(y, 32)``."""
    k = 1
    while isinstance(e, Call) and e.op == "floordiv" and isinstance(e.args[1], Const) and e.args[1].value > 0:
        k *= int(e.args[1].value)
        e = e.args[0]
    return e, k


def mul(a: Expr, b: Expr) -> Expr:
    for x, y in ((a, b), (b, a)):
        if isinstance(x, Const) and x.value == 1:
            return y
        if _zero(x):
            return const(0)
    if isinstance(a, Const) and isinstance(b, Const):
        return const(a.value * b.value)
    return Call(I64, "mul", (a, b))


def floordiv(a: Expr, b: Expr) -> Expr:
    if isinstance(b, Const) and b.value == 1:
        return a
    if isinstance(a, Const) and isinstance(b, Const):
        return const(a.value // b.value)
    if isinstance(b, Const) and b.value > 0:
        if _below(a, b.value):
            return const(0)
        split = _multiple_plus_rest(a)
        if split is not None:  # a = x * c + y with 0 <= y < c
            x, c, y = split
            if b.value % c == 0:
                return floordiv(x, const(b.value // c))
            if c % b.value == 0:
                return add(mul(x, const(c // b.value)), floordiv(y, b))
    return Call(I64, "floordiv", (a, b))


def _below(e: Expr, n: int) -> bool:
    """Whether ``e`` is known to lie in ``[0, n)``."""
    if isinstance(e, Const):
        return 0 <= e.value < n
    return isinstance(e, LoopVar) and e.extent <= n


def _multiple_plus_rest(e: Expr) -> tuple[Expr, int, Expr] | None:
    """``(x, c, y)`` when ``e`` is ``x * c + y`` with ``c`` a positive constant and ``y`` known in ``[0, c)``."""
    if not (isinstance(e, Call) and e.op == "add"):
        return None
    for product, rest in (e.args, e.args[::-1]):
        if isinstance(product, Call) and product.op == "mul":
            for x, c in (product.args, product.args[::-1]):
                if isinstance(c, Const) and c.value > 0 and _below(rest, c.value):
                    return x, int(c.value), rest
    return None


def mod(a: Expr, b: Expr) -> Expr:
    if isinstance(b, Const) and b.value == 1:
        return const(0)
    if isinstance(a, Const) and isinstance(b, Const):
        return const(a.value % b.value)
    if isinstance(b, Const) and b.value > 0:
        if _below(a, b.value):
            return a
        split = _multiple_plus_rest(a)
        if split is not None:  # a = x * c + y with 0 <= y < c
            x, c, y = split
            if c % b.value == 0:
                return mod(y, b)
            if b.value % c == 0:
                return add(mul(mod(x, const(b.value // c)), const(c)), y)
    return Call(I64, "mod", (a, b))


_INDEX_OPS: dict[str, Callable[[Expr, Expr], Expr]] = {"add": add, "mul": mul, "floordiv": floordiv, "mod": mod}


def map_body(body: tuple, fn: Callable[[Expr], Expr]) -> tuple:
    """``body`` with ``fn`` applied to each of its expressions (nested loops and reductions included)."""
    out = []
    for s in body:
        if isinstance(s, Let):
            out.append(Let(s.name, fn(s.value)))
        elif isinstance(s, Store):
            out.append(Store(s.buffer, fn(s.index), fn(s.value)))
        elif isinstance(s, Reduce):
            out.append(Reduce(s.acc, s.kind, s.dtype, s.var, fn(s.extent), map_body(s.body, fn), fn(s.value)))
        elif isinstance(s, Loop):
            out.append(Loop(s.var, fn(s.extent), map_body(s.body, fn)))
        else:
            out.append(s)
    return tuple(out)


def body_exprs(body: tuple):
    """Every expression of a statement list, nested loops and reductions included (extents too)."""
    for s in body:
        if isinstance(s, Let):
            yield s.value
        elif isinstance(s, Store):
            yield from (s.index, s.value)
        elif isinstance(s, Reduce):
            yield s.extent
            yield from body_exprs(s.body)
            yield s.value
        elif isinstance(s, Loop):
            yield s.extent
            yield from body_exprs(s.body)


def inline_lets(expr: Expr, lets: dict[str, Expr]) -> Expr:
    """``expr`` with every name bound in ``lets`` replaced by its value, recursively."""
    if isinstance(expr, Var) and expr.name in lets:
        return inline_lets(lets[expr.name], lets)
    if isinstance(expr, Call):
        return Call(expr.dtype, expr.op, tuple(inline_lets(a, lets) for a in expr.args), expr.attrs)
    if isinstance(expr, Load):
        return Load(expr.dtype, expr.buffer, inline_lets(expr.index, lets))
    return expr


def walk(expr: Expr):
    """Every sub-expression, children before parents."""
    if isinstance(expr, Call):
        for a in expr.args:
            yield from walk(a)
    elif isinstance(expr, Load):
        yield from walk(expr.index)
    yield expr
