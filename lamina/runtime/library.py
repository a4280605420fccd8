"""Library calls for ops that stay outside kernels: GEMMs, convolutions, attention, pooling, scans, views.

Each entry turns a lamina op into a line of Python over torch tensors for the generated
wrapper; ``out`` names a preallocated buffer the call writes into, or is None when the call
allocates its result (then the line assigns it).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..ir.core import Op
from ..ir.dtypes import to_torch


Derived = Callable[[str, str], str]


def _inline(base: str, suffix: str) -> str:
    return f"{base}{suffix}"


def call_line(op: Op, args: Sequence[str], outs: Sequence[str | None], results: Sequence[str],
              derive: Derived = _inline) -> str:
    """One wrapper line computing ``op``; writes ``outs`` when given, else binds ``results``.

    ``derive(name, suffix)`` names the view ``name + suffix`` (a reshape, transpose or view
    of an operand); the plan builder passes one that computes views of static tensors
    (weights, arena buffers) once instead of on every call.
    """
    a, at = list(args), op.attrs
    out = outs[0] if outs else None
    n = op.name
    if n == "linear":
        x, wt = derive(a[0], _as_rows(op.operands[0].type)), derive(a[1], ".t()")
        if out is not None:
            rows = derive(out, _as_rows(op.results[0].type))
            return f"torch.addmm({a[2]}, {x}, {wt}, out={rows})" if len(a) == 3 else f"torch.mm({x}, {wt}, out={rows})"
        return f"{results[0]} = torch.nn.functional.linear({', '.join(a)})"
    if n == "matmul":
        return f"torch.matmul({a[0]}, {a[1]}, out={out})" if out else f"{results[0]} = torch.matmul({a[0]}, {a[1]})"
    if n == "attention":
        return f"{results[0]} = {attention_expr(op, a)}"
    if n == "conv2d":
        bias = a[2] if len(a) == 3 else "None"
        return (f"{results[0]} = torch.nn.functional.conv2d({a[0]}, {a[1]}, {bias}, stride={tuple(at['stride'])}, "
                f"padding={tuple(at['padding'])}, dilation={tuple(at['dilation'])}, groups={at['groups']})")
    if n == "max_pool2d":
        return (f"{results[0]} = torch.nn.functional.max_pool2d({a[0]}, {tuple(at['kernel'])}, "
                f"{tuple(at['stride']) or None}, {tuple(at['padding'])}, {tuple(at['dilation'])}, "
                f"ceil_mode={at['ceil_mode']})")
    if n == "avg_pool2d":
        return (f"{results[0]} = torch.nn.functional.avg_pool2d({a[0]}, {tuple(at['kernel'])}, "
                f"{tuple(at['stride']) or None}, {tuple(at['padding'])}, {at['ceil_mode']}, {at['count_include_pad']}, "
                f"{at['divisor_override']})")
    if n == "topk":
        return (f"{results[0]}, {results[1]} = torch.topk({a[0]}, {at['k']}, {at['dim']}, largest={at['largest']}, "
                f"sorted={at['sorted']})")
    if n == "sort":
        return f"{results[0]}, {results[1]} = torch.sort({a[0]}, dim={at['dim']}, descending={at['descending']}, stable=True)"
    if n == "histc":
        return f"{results[0]} = torch.histc({a[0]}, {at['bins']}, {at['min']!r}, {at['max']!r})"
    if n == "index_put":
        rank = op.operands[0].type.rank
        slots = ["None"] * rank
        for p, name in zip(at["positions"], a[2:]):
            slots[p % rank] = name
        while slots[-1] == "None":
            slots.pop()
        return (f"{results[0]} = torch.ops.aten.index_put.default({a[0]}, [{', '.join(slots)}], {a[1]}, "
                f"{at['accumulate']})")
    if n == "cumsum":
        return f"torch.cumsum({a[0]}, {at['dim']}, out={out})" if out else f"{results[0]} = torch.cumsum({a[0]}, {at['dim']})"
    if n == "stack":
        items = f"[{', '.join(a)}]"
        return f"torch.stack({items}, {at['dim']}, out={out})" if out else f"{results[0]} = torch.stack({items}, {at['dim']})"
    if n == "argmax":
        return f"{results[0]} = torch.argmax({a[0]}, {at['dim']}, {at['keepdim']})"
    raise NotImplementedError(f"no library call for {op.describe()}")


def _as_rows(t: Any) -> str:
    """A view of a tensor of type ``t`` as a matrix of its last dim (not ``reshape(-1, k)``: 0-size dims)."""
    return ".flatten(0, -2)" if t.rank >= 2 else f".reshape(1, {t.shape[-1]})"


def attention_expr(op: Op, a: Sequence[str]) -> str:
    """torch's scaled_dot_product_attention of ``op`` on tensors named ``a`` (q, k, v, mask)."""
    at = op.attrs
    mask = f", attn_mask={a[3]}" if len(a) == 4 else ""
    scale = f", scale={at['scale']!r}" if at["scale"] is not None else ""
    return (f"torch.nn.functional.scaled_dot_product_attention({a[0]}, {a[1]}, {a[2]}{mask}, "
            f"is_causal={at['causal']}{scale}, enable_gqa={at['gqa']})")


def view_expr(op: Op, a: str, sizes: Any) -> list[str]:
    """Python expressions (one per result) for a view or constant op on torch tensor ``a``."""
    n, at = op.name, op.attrs
    shape = [tuple(sizes(d) for d in v.type.shape) for v in op.results]
    if n == "reshape":
        return [f"{a}.reshape({shape[0]})"]
    if n == "permute":
        return [f"{a}.permute({tuple(at['dims'])})"]
    if n == "expand":
        return [f"{a}.expand({shape[0]})"]
    if n == "slice":
        d = at["dim"] % op.operands[0].type.rank
        return [f"{a}.narrow({d}, {sizes(at['start'])}, {shape[0][d]})" if at["step"] == 1 else
                f"{a}[{'(slice(None),) * ' + str(d) + ' + ' if d else ''}(slice({sizes(at['start'])}, {sizes(at['end'])}, {at['step']}),)]"]
    if n == "split":
        d = at["dim"] % op.operands[0].type.rank
        return [f"{a}.split({[sizes(s) for s in at['sizes']]}, {d})[{i}]" for i in range(len(op.results))]
    if n in ("identity", "dropout"):
        return [a]
    if n == "full":
        value = at["value"]
        text = f"float('{value}')" if isinstance(value, float) and not math.isfinite(value) else repr(value)
        return [f"torch.full({shape[0]}, {text}, dtype={to_torch(at['dtype'])})"]
    if n == "arange":
        return [f"torch.arange({sizes(at['start'])}, {sizes(at['end'])}, {at['step']}, dtype={to_torch(at['dtype'])})"]
    raise NotImplementedError(f"no view for {op.describe()}")


WRITES_INTO_OUT = frozenset({"linear", "matmul", "cumsum", "stack"})
# library ops computed once per plan when every operand is fixed for the plan (weights): a newton
# chunk's stacked layer weights are a snapshot taken when the plan is built
HOISTED_WHEN_STATIC = frozenset({"stack"})
