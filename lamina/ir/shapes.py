"""Dimensions: plain ints or symbolic SymPy expressions (``B``, ``B*T``), and shape arithmetic."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import reduce
from typing import TYPE_CHECKING, Any, Union

import sympy

if TYPE_CHECKING:
    from .core import Op

Dim = Union[int, sympy.Expr]
Shape = tuple[Dim, ...]


def dim(value: object) -> Dim:
    """Normalise an int, SymPy expression, or torch SymInt to a Dim (ints stay ints)."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a dimension")
    if isinstance(value, int):
        return value
    if isinstance(value, sympy.Expr):
        return int(value) if value.is_Integer else value
    node = getattr(value, "node", None)  # torch.SymInt
    if node is not None and hasattr(node, "expr"):
        expr = sympy.sympify(node.expr)
        return int(expr) if expr.is_Integer else expr
    if isinstance(value, str):
        return symbol(value)
    raise TypeError(f"not a dimension: {value!r}")


def symbol(name: str) -> sympy.Symbol:
    """The symbol for a named dimension; symbols are positive integers."""
    return sympy.Symbol(name, integer=True, positive=True)


def at_least(a: Any, b: Any) -> bool | None:
    """Whether ``a >= b`` for every value of the size symbols (True), for none (False), or it depends (None)."""
    diff = sympy.simplify(sympy.sympify(a) - sympy.sympify(b))
    return diff.is_nonnegative


def numel(shape: Sequence[Dim]) -> Dim:
    return dim(reduce(lambda a, b: a * b, shape, 1))


def format_dim(d: Dim) -> str:
    return str(d) if isinstance(d, int) else str(d).replace(" ", "")


def broadcast(*shapes: Sequence[Dim]) -> Shape:
    """NumPy broadcasting of shapes; raises ValueError naming the clashing dims."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        size: Dim = 1
        for s in shapes:
            d = s[axis - rank + len(s)] if axis - rank + len(s) >= 0 else 1
            if d == 1 or d == size:
                continue
            if size == 1:
                size = d
            else:
                raise ValueError(f"shapes {' and '.join(str(list(map(format_dim, s))) for s in shapes)} do not broadcast")
        out.append(size)
    return tuple(out)


def evaluate(d: Dim, bindings: Mapping[sympy.Symbol, int]) -> int:
    """The concrete value of a dim under symbol bindings."""
    if isinstance(d, int):
        return d
    value = d.subs(bindings)
    if not value.is_Integer:
        raise ValueError(f"dimension {d} is not determined by the bound symbols")
    return int(value)


def fixed_sizes(op: "Op") -> bool:
    """Whether every shape and attribute of ``op`` and of the ops in its regions is a number, no size symbol:
    what the interpreter can compute before a call binds the sizes."""
    inner = [o for r in op.regions for o in r.ops]
    values = [*op.operands, *op.results, *(x for o in inner for x in (*o.operands, *o.results))]
    return all(isinstance(d, int) for x in values for d in x.type.shape) and \
        not any(_symbolic(a) for o in (op, *inner) for a in o.attrs.values())


def _symbolic(attr: Any) -> bool:
    if isinstance(attr, (list, tuple)):
        return any(_symbolic(a) for a in attr)
    return isinstance(attr, sympy.Basic) and not attr.is_number
