"""Library calls for ops that stay outside kernels: GEMMs, convolutions, attention, pooling, scans, views.

Each entry of ``LIBRARY`` turns a lamina op into a line of Python over torch tensors for the
generated wrapper; ``out`` names a preallocated buffer the call writes into, or is None when
the call allocates its result (then the line assigns it). ``VIEWS`` gives the torch view (or
constant) of each view and constant op.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..ir.core import Op
from ..ir.dtypes import to_torch
from ..ir.quant_format import QuantFormat
from ..ir.targets import OpTable


Derived = Callable[[str, str], str]
Line = Callable[[Op, list[str], "str | None", Sequence[str], Derived], str]


@dataclass(frozen=True)
class LibraryCall:
    """How the wrapper computes one library op: ``line(op, args, out, results, derive)``.

    ``writes_into_out``: the call can write a preallocated arena buffer (``out=``);
    ``hoisted_when_static``: computed once per plan when every operand is fixed for the plan
    (a newton chunk's stacked layer weights: a snapshot taken when the plan is built)."""

    line: Line
    writes_into_out: bool = False
    hoisted_when_static: bool = False


LIBRARY: OpTable[LibraryCall] = OpTable("library", "library call")
VIEWS: OpTable[Callable[[Op, str, list[tuple], Any], list[str]]] = OpTable("library", "view")


def library_call(*names: str, writes_into_out: bool = False, hoisted_when_static: bool = False) -> Callable[[Line], Line]:
    """Decorator: ``line`` computes ops ``names`` in the wrapper."""
    def add(line: Line) -> Line:
        LIBRARY.register(*names)(LibraryCall(line, writes_into_out, hoisted_when_static))
        return line

    return add


def _inline(base: str, suffix: str) -> str:
    return f"{base}{suffix}"


def call_line(op: Op, args: Sequence[str], outs: Sequence[str | None], results: Sequence[str],
              derive: Derived = _inline) -> str:
    """One wrapper line computing ``op``; writes ``outs`` when given, else binds ``results``.

    ``derive(name, suffix)`` names the view ``name + suffix`` (a reshape, transpose or view
    of an operand); the plan builder passes one that computes views of static tensors
    (weights, arena buffers) once instead of on every call.
    """
    entry = LIBRARY.get(op.name, op.describe())
    return entry.line(op, list(args), outs[0] if outs else None, results, derive)


def writes_into_out(name: str) -> bool:
    return name in LIBRARY and LIBRARY.get(name).writes_into_out


def hoisted_when_static(name: str) -> bool:
    return name in LIBRARY and LIBRARY.get(name).hoisted_when_static


@library_call("linear", writes_into_out=True)
def _linear(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    x, wt = derive(a[0], _as_rows(op.operands[0].type)), derive(a[1], ".t()")
    if out is not None:
        rows = derive(out, _as_rows(op.results[0].type))
        return f"torch.addmm({a[2]}, {x}, {wt}, out={rows})" if len(a) == 3 else f"torch.mm({x}, {wt}, out={rows})"
    return f"{results[0]} = torch.nn.functional.linear({', '.join(a)})"


@library_call("matmul", writes_into_out=True)
def _matmul(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    return f"torch.matmul({a[0]}, {a[1]}, out={out})" if out else f"{results[0]} = torch.matmul({a[0]}, {a[1]})"


def _format_expr(op: Op) -> str:
    fmt = QuantFormat.of(op.attrs)
    return f"quant_format.QuantFormat({fmt.bits}, {fmt.group}, {fmt.scheme!r})"


@library_call("quantize", hoisted_when_static=True)
def _quantize(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    return f"{', '.join(results)} = quant_format.quantize({a[0]}, {_format_expr(op)})"


@library_call("qlinear")
def _qlinear(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    """Any device: the weight dequantized on each call (the cpu target runs its own kernels instead)."""
    zeros = a[3] if len(a) == 4 else "None"
    return (f"{results[0]} = torch.nn.functional.linear({a[0]}, quant_format.dequantize({a[1]}, {a[2]}, {zeros}, "
            f"{_format_expr(op)}))")


@library_call("attention")
def _attention(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    return f"{results[0]} = {attention_expr(op, a)}"


@library_call("conv2d", writes_into_out=True)
def _conv2d(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    """An NHWC convolution (``layout=nhwc``) is torch's on the channels-last view of its input, with the
    weight kept channels-last too (oneDNN would reorder it on every call), written into its arena
    buffer seen as channels-last NCHW. The input's ``contiguous`` is free when it is dense already (an
    NHWC image from a kernel) and copies otherwise (the model's NCHW input seen as NHWC)."""
    at = op.attrs
    bias = a[2] if len(a) == 3 else "None"
    geometry = f"{list(at['stride'])}, {list(at['padding'])}, {list(at['dilation'])}, False, [0], {at['groups']}"
    if at["layout"] == "nhwc":
        weight = derive(a[1], ".contiguous(memory_format=torch.channels_last)")
        image = f"{a[0]}.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)"
        if out is not None:
            return f"torch.ops.aten.convolution.out({image}, {weight}, {bias}, {geometry}, out={out}.permute(0, 3, 1, 2))"
        return (f"{results[0]} = torch.ops.aten.convolution({image}, {weight}, {bias}, {geometry})"
                f".permute(0, 2, 3, 1).contiguous()")
    if out is not None:
        return f"torch.ops.aten.convolution.out({a[0]}, {a[1]}, {bias}, {geometry}, out={out})"
    return f"{results[0]} = torch.ops.aten.convolution({a[0]}, {a[1]}, {bias}, {geometry})"


def _window(op: Op, x: str) -> str:
    """The arguments torch's pooling functions share: input, kernel, stride (None: the kernel), padding."""
    at = op.attrs
    return f"{x}, {tuple(at['kernel'])}, {tuple(at['stride']) or None}, {tuple(at['padding'])}"


@library_call("max_pool2d")
def _max_pool2d(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    at = op.attrs
    return (f"{results[0]} = torch.nn.functional.max_pool2d({_window(op, a[0])}, {tuple(at['dilation'])}, "
            f"ceil_mode={at['ceil_mode']})")


@library_call("avg_pool2d")
def _avg_pool2d(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    at = op.attrs
    return (f"{results[0]} = torch.nn.functional.avg_pool2d({_window(op, a[0])}, {at['ceil_mode']}, "
            f"{at['count_include_pad']}, {at['divisor_override']})")


@library_call("topk")
def _topk(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    at = op.attrs
    return (f"{results[0]}, {results[1]} = torch.topk({a[0]}, {at['k']}, {at['dim']}, largest={at['largest']}, "
            f"sorted={at['sorted']})")


@library_call("sort")
def _sort(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    at = op.attrs
    return f"{results[0]}, {results[1]} = torch.sort({a[0]}, dim={at['dim']}, descending={at['descending']}, stable=True)"


@library_call("histc")
def _histc(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    at = op.attrs
    return f"{results[0]} = torch.histc({a[0]}, {at['bins']}, {at['min']!r}, {at['max']!r})"


@library_call("index_put")
def _index_put(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    at = op.attrs
    rank = op.operands[0].type.rank
    slots = ["None"] * rank
    for p, name in zip(at["positions"], a[2:]):
        slots[p % rank] = name
    while slots[-1] == "None":
        slots.pop()
    return (f"{results[0]} = torch.ops.aten.index_put.default({a[0]}, [{', '.join(slots)}], {a[1]}, "
            f"{at['accumulate']})")


@library_call("cumsum", writes_into_out=True)
def _cumsum(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    d = op.attrs["dim"]
    return f"torch.cumsum({a[0]}, {d}, out={out})" if out else f"{results[0]} = torch.cumsum({a[0]}, {d})"


@library_call("stack", writes_into_out=True, hoisted_when_static=True)
def _stack(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    items, d = f"[{', '.join(a)}]", op.attrs["dim"]
    return f"torch.stack({items}, {d}, out={out})" if out else f"{results[0]} = torch.stack({items}, {d})"


@library_call("constant", hoisted_when_static=True)
def _constant(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    at = op.attrs
    return (f"{results[0]} = torch.tensor({at['value']!r}, dtype={to_torch(at['dtype'])}, "
            f"device=_device).reshape({tuple(at['shape'])})")


@library_call("argmax")
def _argmax(op: Op, a: list[str], out: str | None, results: Sequence[str], derive: Derived) -> str:
    return f"{results[0]} = torch.argmax({a[0]}, {op.attrs['dim']}, {op.attrs['keepdim']})"


def _as_rows(t: Any) -> str:
    """A view of a tensor of type ``t`` as a matrix of its last dim (not ``reshape(-1, k)``: 0-size dims)."""
    return ".flatten(0, -2)" if t.rank >= 2 else ".reshape(1, -1)"


def attention_expr(op: Op, a: Sequence[str]) -> str:
    """torch's scaled_dot_product_attention of ``op`` on tensors named ``a`` (q, k, v, mask)."""
    at = op.attrs
    mask = f", attn_mask={a[3]}" if len(a) == 4 else ""
    scale = f", scale={at['scale']!r}" if at["scale"] is not None else ""
    return (f"torch.nn.functional.scaled_dot_product_attention({a[0]}, {a[1]}, {a[2]}{mask}, "
            f"is_causal={at['causal']}{scale}, enable_gqa={at['gqa']})")


def view_expr(op: Op, a: str, sizes: Any) -> list[str]:
    """Python expressions (one per result) for a view or constant op on torch tensor ``a``."""
    shapes = [tuple(sizes(d) for d in v.type.shape) for v in op.results]
    return VIEWS.get(op.name, op.describe())(op, a, shapes, sizes)


@VIEWS.register("reshape")
def _reshape(op: Op, a: str, shapes: list[tuple], sizes: Any) -> list[str]:
    return [f"{a}.reshape({shapes[0]})"]


@VIEWS.register("permute")
def _permute(op: Op, a: str, shapes: list[tuple], sizes: Any) -> list[str]:
    return [f"{a}.permute({tuple(op.attrs['dims'])})"]


@VIEWS.register("expand")
def _expand(op: Op, a: str, shapes: list[tuple], sizes: Any) -> list[str]:
    return [f"{a}.expand({shapes[0]})"]


@VIEWS.register("slice")
def _slice(op: Op, a: str, shapes: list[tuple], sizes: Any) -> list[str]:
    at = op.attrs
    d = at["dim"] % op.operands[0].type.rank
    if at["step"] == 1:
        return [f"{a}.narrow({d}, {sizes(at['start'])}, {shapes[0][d]})"]
    lead = f"(slice(None),) * {d} + " if d else ""
    return [f"{a}[{lead}(slice({sizes(at['start'])}, {sizes(at['end'])}, {at['step']}),)]"]


@VIEWS.register("split")
def _split(op: Op, a: str, shapes: list[tuple], sizes: Any) -> list[str]:
    d = op.attrs["dim"] % op.operands[0].type.rank
    return [f"{a}.split({[sizes(s) for s in op.attrs['sizes']]}, {d})[{i}]" for i in range(len(op.results))]


@VIEWS.register("identity", "dropout")
def _same(op: Op, a: str, shapes: list[tuple], sizes: Any) -> list[str]:
    return [a]


@VIEWS.register("full")
def _full(op: Op, a: str, shapes: list[tuple], sizes: Any) -> list[str]:
    value = op.attrs["value"]
    text = f"float('{value}')" if isinstance(value, float) and not math.isfinite(value) else repr(value)
    return [f"torch.full({shapes[0]}, {text}, dtype={to_torch(op.attrs['dtype'])})"]


@VIEWS.register("arange")
def _arange(op: Op, a: str, shapes: list[tuple], sizes: Any) -> list[str]:
    at = op.attrs
    return [f"torch.arange({sizes(at['start'])}, {sizes(at['end'])}, {at['step']}, dtype={to_torch(at['dtype'])})"]


from . import collectives  # noqa: E402,F401  (its library calls: the collective ops)
