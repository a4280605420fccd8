"""Differential fuzzing: random torch programs, compiled by lamina, against eager PyTorch.

A program is a list of steps over a pool of tensors (the inputs first). Each step is one torch
call drawn from ``STEPS``: elementwise chains with broadcasting, reductions over random axes (some
read back against their operand through a reshape that puts the reduced axes back as size 1),
layout changes (reshape, permute, expand, slice with steps, pad, concat, split, roll, flip),
indexing with negative and edge indices, matmuls, and attention with and without masks (bool
masks broadcast along the keys, float masks read through a permute) and causal flags. Sizes are
odd, sometimes 1, sometimes 0. Steps are evaluated eagerly while the program is drawn, so every
program runs in eager PyTorch; lamina must give the same numbers (cpu backend, poisoned buffers,
and the reference interpreter), or refuse with one of its own errors.

``tests/test_fuzz.py`` runs a small budget in CI; ``benchmarks/fuzz.py --minutes N`` runs longer
and prints each failing program, its lamina IR and the error.
"""
from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    from hypothesis import strategies as st
except ImportError:  # the fuzzer needs the test extra; importing lamina does not
    st = None

SIZES = (1, 2, 3, 5, 7, 8, 16)
FLOAT_TOL = 1e-4  # max|got - want| / max(max|want|, SCALE_FLOOR): fused float32 chains reassociate
SCALE_FLOOR = 1e-2  # an output that is all rounding noise (a cancellation to ~1e-8) is compared absolutely


@dataclass
class Step:
    """``pool.append(fn(*[pool[i] for i in args]))``; ``text`` is the same call as Python source."""

    fn: Callable[..., torch.Tensor]
    args: tuple[int, ...]
    text: str


@dataclass
class Program:
    inputs: list[torch.Tensor]
    steps: list[Step] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    transposed_calls: bool = False
    through_dynamo: bool = False
    numba_kernels: bool = False

    def source(self) -> str:
        """The program as Python, for a failure report."""
        lines = [f"# called with {'transposed (non-contiguous)' if self.transposed_calls else 'contiguous'} inputs"
                 f"{', also through torch.compile' if self.through_dynamo else ''}"
                 f"{', also with Numba kernels' if self.numba_kernels else ''}"]
        lines += [f"x{i} = {_describe(t)}" for i, t in enumerate(self.inputs)]
        n = len(self.inputs)
        lines += [f"x{n + k} = {s.text.format(*(f'x{a}' for a in s.args))}" for k, s in enumerate(self.steps)]
        lines.append(f"return {', '.join(f'x{i}' for i in self.outputs)}")
        return "\n".join(lines)


def _describe(t: torch.Tensor) -> str:
    if t.dtype == torch.int64:
        return f"torch.tensor({t.tolist()})"
    return f"torch.randn({list(t.shape)})"


class ProgramModule(nn.Module):
    """Runs a program's steps on its inputs."""

    def __init__(self, program: Program) -> None:
        super().__init__()
        self.program = program

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pool = list(xs)
        for s in self.program.steps:
            pool.append(s.fn(*(pool[i] for i in s.args)))
        return tuple(pool[i] for i in self.program.outputs)


# ---- steps: each draws its operands and parameters, returns a Step or None ---------------------

def _floats(pool: Sequence[torch.Tensor]) -> list[int]:
    return [i for i, t in enumerate(pool) if t.is_floating_point()]


UNARY = {
    "exp": ("torch.exp({0}.clamp(-20, 20))", lambda x: torch.exp(x.clamp(-20, 20))),
    "tanh": ("torch.tanh({0})", torch.tanh), "sigmoid": ("torch.sigmoid({0})", torch.sigmoid),
    "relu": ("torch.relu({0})", torch.relu), "neg": ("-{0}", torch.neg), "abs": ("{0}.abs()", torch.abs),
    "sqrt": ("torch.sqrt({0}.abs() + 0.1)", lambda x: torch.sqrt(x.abs() + 0.1)),
    "log": ("torch.log({0}.abs() + 0.1)", lambda x: torch.log(x.abs() + 0.1)),
    "erf": ("torch.erf({0})", torch.erf), "gelu": ("F.gelu({0})", F.gelu),
    "gelu_tanh": ("F.gelu({0}, approximate='tanh')", lambda x: F.gelu(x, approximate="tanh")),
    "silu": ("F.silu({0})", F.silu), "sin": ("torch.sin({0})", torch.sin), "cos": ("torch.cos({0})", torch.cos),
    "floor": ("torch.floor({0} * 3)", lambda x: torch.floor(x * 3)),
    "ceil": ("torch.ceil({0} * 3)", lambda x: torch.ceil(x * 3)),
    "trunc": ("torch.trunc({0} * 3)", lambda x: torch.trunc(x * 3)), "sign": ("torch.sign({0})", torch.sign),
    "log1p": ("torch.log1p({0}.abs())", lambda x: torch.log1p(x.abs())),
    "rsqrt": ("torch.rsqrt({0}.abs() + 0.5)", lambda x: torch.rsqrt(x.abs() + 0.5)),
    "square": ("{0} ** 2", lambda x: x ** 2),
}

BINARY = {
    "add": ("{0} + {1}", torch.add), "sub": ("{0} - {1}", torch.sub), "mul": ("{0} * {1}", torch.mul),
    "div": ("{0} / ({1}.abs() + 0.5)", lambda a, b: a / (b.abs() + 0.5)),
    "maximum": ("torch.maximum({0}, {1})", torch.maximum), "minimum": ("torch.minimum({0}, {1})", torch.minimum),
    "where": ("torch.where({0} > {1}, {0}, {1} * 2)", lambda a, b: torch.where(a > b, a, b * 2)),
    "pow": ("({0}.abs() + 0.5) ** {1}.clamp(-2, 2)", lambda a, b: (a.abs() + 0.5) ** b.clamp(-2, 2)),
    "remainder": ("torch.remainder({0}, {1}.abs() + 0.5)", lambda a, b: torch.remainder(a, b.abs() + 0.5)),
    "fmod": ("torch.fmod({0}, {1}.abs() + 0.5)", lambda a, b: torch.fmod(a, b.abs() + 0.5)),
    "floor_divide": ("{0} // ({1}.abs() + 0.5)", lambda a, b: a // (b.abs() + 0.5)),
}


def _broadcast_partner(draw: Any, shape: torch.Size) -> list[int]:
    """A shape that broadcasts with ``shape``: some dims 1, maybe fewer leading dims."""
    drop = draw(st.integers(0, len(shape)))
    return [1 if draw(st.booleans()) else d for d in shape[drop:]]


def step_unary(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    i = draw(st.sampled_from(_floats(pool)))
    text, fn = UNARY[draw(st.sampled_from(sorted(UNARY)))]
    return Step(fn, (i,), text)


def step_binary(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    i = draw(st.sampled_from(_floats(pool)))
    text, fn = BINARY[draw(st.sampled_from(sorted(BINARY)))]
    same = [j for j in _floats(pool) if j != i and pool[j].shape == pool[i].shape]
    if same and draw(st.booleans()):
        return Step(fn, (i, draw(st.sampled_from(same))), text)
    partner = _broadcast_partner(draw, pool[i].shape)
    if draw(st.booleans()):
        value = draw(st.sampled_from([0.5, -1.25, 3.0]))
        return Step(lambda a, f=fn, p=partner, v=value: f(a, torch.full(p, v)), (i,),
                    text.replace("{1}", f"torch.full({partner}, {value})"))
    scale = draw(st.sampled_from([0.5, 2.0]))  # a broadcast operand computed from the first one
    lead = pool[i].dim() - len(partner)

    def other(a: torch.Tensor, lead: int = lead, partner: list = partner, s: float = scale) -> torch.Tensor:
        for _ in range(lead):
            a = a[0]
        dims = [d for d, (p, n) in enumerate(zip(partner, a.shape)) if p == 1 and n != 1]
        return (a.amax(dims, keepdim=True) if dims else a) * s

    return Step(lambda a, f=fn, o=other: f(a, o(a)), (i,), text.replace("{1}", f"bcast({{0}}, {partner}) * {scale}"))


def step_reduce(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    i = draw(st.sampled_from(_floats(pool)))
    rank = pool[i].dim()
    if rank == 0:
        return None
    kind = draw(st.sampled_from(["sum", "mean", "amax", "amin", "var", "softmax", "log_softmax", "cumsum", "argmax",
                                 "layer_norm", "rms_norm", "logsumexp"]))
    dims = sorted(set(draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank))))
    keep = draw(st.booleans())
    d = dims[0] - rank if draw(st.booleans()) else dims[0]
    if kind in ("sum", "mean", "amax", "amin", "var"):
        fn = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin,
              "var": lambda x, dim, keepdim: torch.var(x, dim, keepdim=keepdim)}[kind]
        if not keep and draw(st.booleans()):  # read back against its operand through a reshape (unsqueeze)
            back = [1 if a in dims else n for a, n in enumerate(pool[i].shape)]
            return Step(lambda x, f=fn, ds=dims, b=back: f(x, ds, keepdim=False).reshape(b) * x, (i,),
                        f"torch.{kind}({{0}}, {dims}).reshape({back}) * {{0}}")
        return Step(lambda x, f=fn, ds=dims, k=keep: f(x, ds, keepdim=k), (i,), f"torch.{kind}({{0}}, {dims}, keepdim={keep})")
    if kind in ("softmax", "log_softmax", "cumsum"):
        fn = getattr(torch, kind)
        return Step(lambda x, f=fn, d=d: f(x, d), (i,), f"torch.{kind}({{0}}, {d})")
    if kind == "logsumexp":
        return Step(lambda x, ds=dims, k=keep: torch.logsumexp(x, ds, keepdim=k), (i,),
                    f"torch.logsumexp({{0}}, {dims}, keepdim={keep})")
    if kind == "argmax":
        return Step(lambda x, d=d, k=keep: torch.argmax(x, d, keepdim=k).float(), (i,),
                    f"torch.argmax({{0}}, {d}, keepdim={keep}).float()")
    n = draw(st.integers(1, rank))
    shape = list(pool[i].shape[rank - n:])
    if kind == "layer_norm":
        return Step(lambda x, s=shape: F.layer_norm(x, s, torch.linspace(0.5, 1.5, math.prod(s)).reshape(s),
                                                    torch.linspace(-0.2, 0.2, math.prod(s)).reshape(s)),
                    (i,), f"F.layer_norm({{0}}, {shape}, <linspace weight>, <linspace bias>)")
    return Step(lambda x, s=shape: F.rms_norm(x, s, torch.linspace(0.5, 1.5, math.prod(s)).reshape(s), 1e-6), (i,),
                f"F.rms_norm({{0}}, {shape}, <linspace weight>, 1e-6)")


def step_layout(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    i = draw(st.sampled_from(_floats(pool)))
    x = pool[i]
    rank = x.dim()
    kind = draw(st.sampled_from(["reshape", "permute", "transpose", "expand", "slice", "pad", "cat", "split", "roll",
                                 "unsqueeze", "repeat", "flatten", "contiguous_T", "flip"]))
    if kind == "reshape" and x.numel() > 0:
        shape = [x.numel()] if draw(st.booleans()) or x.numel() % 2 else [2, -1]
        return Step(lambda t, s=shape: t.reshape(s) * 1.0, (i,), f"{{0}}.reshape({shape}) * 1.0")
    if kind in ("permute", "contiguous_T") and rank >= 2:
        perm = draw(st.permutations(list(range(rank))))
        if kind == "contiguous_T":
            return Step(lambda t, p=perm: t.permute(p).contiguous(), (i,), f"{{0}}.permute({perm}).contiguous()")
        return Step(lambda t, p=perm: t.permute(p) + 0.0, (i,), f"{{0}}.permute({perm}) + 0.0")
    if kind == "transpose" and rank >= 2:
        a, b = draw(st.integers(-rank, rank - 1)), draw(st.integers(-rank, rank - 1))
        return Step(lambda t, a=a, b=b: t.transpose(a, b) * 2.0, (i,), f"{{0}}.transpose({a}, {b}) * 2.0")
    if kind == "expand" and 1 in x.shape:
        shape = [draw(st.sampled_from([3, 4])) if d == 1 else d for d in x.shape]
        return Step(lambda t, s=shape: t.expand(s) * 1.5, (i,), f"{{0}}.expand({shape}) * 1.5")
    if kind == "slice" and rank >= 1:
        d = draw(st.integers(0, rank - 1))
        start, step = draw(st.integers(-3, 2)), draw(st.integers(1, 3))
        key = (slice(None),) * d + (slice(start, None, step),)
        return Step(lambda t, k=key: t[k] - 1.0, (i,), f"{{0}}[{key}] - 1.0")
    if kind == "pad" and rank >= 1:
        pads = [draw(st.integers(-1, 2)) for _ in range(2 * min(rank, 2))]
        value = draw(st.sampled_from([0.0, -2.5]))
        return Step(lambda t, p=pads, v=value: F.pad(t, p, value=v) + 0.0, (i,), f"F.pad({{0}}, {pads}, value={value}) + 0.0")
    if kind == "cat" and rank >= 1:
        d = draw(st.integers(0, rank - 1))
        return Step(lambda t, d=d: torch.cat([t, t * 2, t[(slice(None),) * d + (slice(0, 1),)]], d), (i,),
                    f"torch.cat([{{0}}, {{0}} * 2, {{0}}[:1 along {d}]], {d})")
    if kind == "split" and rank >= 1 and x.shape[-1] >= 2:
        cut = draw(st.integers(1, x.shape[-1] - 1))
        return Step(lambda t, c=cut: t[..., :c].sum(-1, keepdim=True) * t[..., c:], (i,),
                    f"{{0}}[..., :{cut}].sum(-1, keepdim=True) * {{0}}[..., {cut}:]")
    if kind == "roll" and rank >= 1:
        shift = draw(st.integers(-3, 3))
        d = draw(st.integers(0, rank - 1))
        return Step(lambda t, s=shift, d=d: torch.roll(t, s, d) + 1.0, (i,), f"torch.roll({{0}}, {shift}, {d}) + 1.0")
    if kind == "unsqueeze":
        d = draw(st.integers(0, rank))
        return Step(lambda t, d=d: t.unsqueeze(d) * 0.5, (i,), f"{{0}}.unsqueeze({d}) * 0.5")
    if kind == "repeat" and 1 <= rank <= 3:
        reps = [draw(st.integers(1, 2)) for _ in range(rank)]
        return Step(lambda t, r=reps: t.repeat(*r) + 0.5, (i,), f"{{0}}.repeat(*{reps}) + 0.5")
    if kind == "flatten" and rank >= 2:
        return Step(lambda t: t.flatten(1) * 3.0, (i,), "{0}.flatten(1) * 3.0")
    if kind == "flip" and rank >= 1:
        dims = sorted(set(draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank))))
        return Step(lambda t, ds=dims: torch.flip(t, ds) * 1.0, (i,), f"torch.flip({{0}}, {dims}) * 1.0")
    return None


def step_index(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    """Indices in range, negatives and edges included, taken from data the program holds."""
    i = draw(st.sampled_from(_floats(pool)))
    x = pool[i]
    if x.dim() == 0 or x.shape[0] == 0:
        return None
    n = x.shape[0]
    values = draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=5))
    kind = draw(st.sampled_from(["subscript", "index_select", "gather", "embedding"]))
    if kind == "subscript":
        return Step(lambda t, v=values: t[torch.tensor(v)] * 2.0, (i,), f"{{0}}[torch.tensor({values})] * 2.0")
    positive = [v % n for v in values]
    if kind == "index_select":
        return Step(lambda t, v=positive: torch.index_select(t, 0, torch.tensor(v)) + 1.0, (i,),
                    f"torch.index_select({{0}}, 0, torch.tensor({positive})) + 1.0")
    if kind == "embedding" and x.dim() == 2:
        return Step(lambda t, v=positive: F.embedding(torch.tensor(v), t) - 0.5, (i,),
                    f"F.embedding(torch.tensor({positive}), {{0}}) - 0.5")
    shape = list(x.shape)
    count = math.prod(shape)
    idx = torch.tensor([positive[k % len(positive)] for k in range(count)]).reshape(shape) if count else \
        torch.zeros(shape, dtype=torch.int64)
    return Step(lambda t, ix=idx: torch.gather(t, 0, ix) * 1.5, (i,), f"torch.gather({{0}}, 0, <index {shape}>) * 1.5")


def step_matmul(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    i = draw(st.sampled_from(_floats(pool)))
    x = pool[i]
    if x.dim() == 0:
        return None
    k, m = x.shape[-1], draw(st.sampled_from(SIZES))
    w = torch.linspace(-1, 1, k * m).reshape(m, k) / max(k, 1) ** 0.5
    if draw(st.booleans()):
        b = torch.linspace(-0.5, 0.5, m)
        return Step(lambda t, w=w, b=b: F.linear(t, w, b), (i,), f"F.linear({{0}}, <weight [{m}, {k}]>, <bias>)")
    return Step(lambda t, w=w: t @ w.t(), (i,), f"{{0}} @ <weight [{k}, {m}]>")


def step_attention(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    """q, k, v from one pooled tensor made rank 4; masks as models build them."""
    i = draw(st.sampled_from(_floats(pool)))
    x = pool[i]
    if x.dim() == 0 or x.numel() == 0:
        return None
    if not torch.isfinite(x).all():
        return None  # torch's own attention kernels disagree on non-finite scores (NaN in some lanes, 0 in others)
    b, h, t, d = 1, draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 3, 5, 8])), draw(st.sampled_from([4, 8]))
    mask_kind = draw(st.sampled_from(["none", "causal", "bool_rows", "bool", "float_permuted"]))
    big = draw(st.booleans())  # past the cpu kernel's size limit: torch's kernel into the arena
    if big:
        t = 48

    def attend(x: torch.Tensor, h: int = h, t: int = t, d: int = d, mk: str = mask_kind) -> torch.Tensor:
        flat = x.reshape(-1)
        base = flat.repeat(3 * h * t * d // flat.numel() + 1)[:3 * h * t * d].reshape(3, b, h, t, d)
        q, k, v = base[0] * 0.5, base[1], base[2] - 0.25
        if mk == "causal":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True) * 1.0
        mask = None
        if mk == "bool_rows":  # transformers 5's bidirectional mask: stride 0 along the keys
            mask = (torch.arange(t)[None, None, :, None] >= 1).expand(1, 1, t, t)
        elif mk == "bool":
            mask = torch.tril(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        elif mk == "float_permuted":  # T5's position bias
            mask = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).float()[..., None].expand(t, t, h) \
                .permute(2, 0, 1).unsqueeze(0) * 0.1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * 1.0

    return Step(attend, (i,), f"<attention of {{0}}: heads {h}, tokens {t}, dim {d}, mask {mask_kind}>")


def step_integer(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    """Integer arithmetic on values derived from floats, back to float."""
    i = draw(st.sampled_from(_floats(pool)))
    op = draw(st.sampled_from(["floor_divide", "remainder", "fmod", "trunc_div"]))
    divisor = draw(st.sampled_from([2, -3, 5]))

    def integer(x: torch.Tensor, op: str = op, q: int = divisor) -> torch.Tensor:
        n = (x * 7).to(torch.int64)
        if op == "floor_divide":
            r = n // q
        elif op == "trunc_div":
            r = torch.div(n, q, rounding_mode="trunc")
        else:
            r = getattr(torch, op)(n, q)
        return r.float() * 0.5

    return Step(integer, (i,), f"<({{0}} * 7).long() {op} {divisor}, as float * 0.5>")


def step_masked(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    """Bool masks computed from data: masked_fill, where with a mask, logical ops."""
    i = draw(st.sampled_from(_floats(pool)))
    threshold = draw(st.sampled_from([-0.5, 0.0, 0.7]))
    kind = draw(st.sampled_from(["masked_fill", "where_not", "and_or"]))
    if kind == "masked_fill":
        fill = draw(st.sampled_from([0.0, -1e4, float("-inf")]))
        return Step(lambda x, t=threshold, f=fill: x.masked_fill(x > t, f) * 1.0, (i,),
                    f"{{0}}.masked_fill({{0}} > {threshold}, {fill}) * 1.0")
    if kind == "where_not":
        return Step(lambda x, t=threshold: torch.where(~(x < t), x, -x), (i,), f"torch.where(~({{0}} < {threshold}), {{0}}, -{{0}})")
    return Step(lambda x, t=threshold: ((x > t) & (x < t + 1) | (x == 0)).float(), (i,),
                f"(({{0}} > {threshold}) & ({{0}} < {threshold} + 1) | ({{0}} == 0)).float()")


def step_inplace(draw: Any, pool: list[torch.Tensor]) -> Step | None:
    """In-place updates of a copy (functionalised by torch.export): scaled, a slice assigned, a row set."""
    i = draw(st.sampled_from(_floats(pool)))
    if pool[i].dim() == 0:
        return None
    kind = draw(st.sampled_from(["mul_", "slice_assign", "index_assign"]))

    def update(x: torch.Tensor, kind: str = kind) -> torch.Tensor:
        y = x.clone()
        if kind == "mul_":
            y.mul_(1.5).add_(0.25)
        elif kind == "slice_assign":
            y[..., ::2] = y[..., ::2] * -1
        else:
            y[torch.tensor([0, -1])] = 3.0
        return y

    return Step(update, (i,), f"<copy of {{0}} updated in place: {kind}>")


STEPS = {"masked": step_masked, "inplace": step_inplace, "unary": step_unary, "binary": step_binary, "reduce": step_reduce, "layout": step_layout,
         "index": step_index, "matmul": step_matmul, "attention": step_attention, "integer": step_integer}


def programs(max_steps: int = 6) -> Any:
    """A hypothesis strategy of programs that run in eager PyTorch."""
    if st is None:
        raise ImportError("lamina.fuzz needs hypothesis: pip install 'lamina[test]'")

    @st.composite
    def draw_program(draw: Any) -> Program:
        n_inputs = draw(st.integers(1, 2))
        inputs = []
        for _ in range(n_inputs):
            rank = draw(st.integers(0, 4))
            shape = [draw(st.sampled_from(SIZES + ((0,) if draw(st.integers(0, 9)) == 0 else ()))) for _ in range(rank)]
            inputs.append(torch.randn(shape))
        program = Program(inputs)
        pool = list(inputs)
        for _ in range(draw(st.integers(1, max_steps))):
            step = STEPS[draw(st.sampled_from(sorted(STEPS)))](draw, pool)
            if step is None:
                continue
            try:
                with torch.no_grad():
                    value = step.fn(*(pool[i] for i in step.args))
            except (RuntimeError, IndexError, ValueError):
                continue  # not a valid program for these shapes
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() > 1 << 16:
                continue
            program.steps.append(step)
            pool.append(value)
        n = len(inputs)
        made = list(range(n, n + len(program.steps)))
        picks = draw(st.lists(st.sampled_from(made), min_size=1, max_size=3, unique=True)) if made else [0]
        program.outputs = sorted(picks)  # intermediates too, some of them views of others
        program.transposed_calls = draw(st.booleans())  # call with non-contiguous inputs (same values)
        program.through_dynamo = draw(st.integers(0, 3)) == 0  # also through torch.compile(backend="lamina")
        program.numba_kernels = draw(st.integers(0, 2)) == 0  # also with the cpu backend's other language
        return program

    return draw_program()


# ---- the differential check ------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    status: str  # ok, refused (a clear lamina error), wrong, crash
    detail: str = ""
    ir: str = ""


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """max|got - want| / max(max|want|, SCALE_FLOOR) over finite entries; inf when shapes, NaN or inf
    positions differ. Integer and bool results must be equal."""
    if not want.is_floating_point():
        return 0.0 if got.shape == want.shape and torch.equal(got, want) else math.inf
    if got.shape != want.shape or not torch.equal(got.isnan(), want.isnan()) or \
            not torch.equal(got.isinf(), want.isinf()):
        return math.inf
    infinite = want.isinf()
    if not torch.equal(got[infinite], want[infinite]):  # infinities of the same sign
        return math.inf
    finite = want.isfinite()
    if not finite.any():
        return 0.0
    diff = (got[finite].double() - want[finite].double()).abs().max().item()
    return diff / max(want[finite].abs().max().item(), SCALE_FLOOR)


def _strided_like(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values in memory laid out transposed (a non-contiguous input)."""
    if x.dim() < 2:
        return x
    return x.transpose(0, -1).contiguous().transpose(0, -1)


def check(program: Program) -> Outcome:
    """Compile ``program`` with lamina (cpu, poisoned; the reference backend; and, for some programs,
    torch.compile with the lamina backend) and compare with eager on the example and fresh inputs."""
    import lamina
    from lamina.dynamo import LaminaBackend
    from lamina.ir.errors import LaminaError
    from lamina.runtime import native_kernels

    model = ProgramModule(program).eval()
    args = tuple(program.inputs)
    ir = ""
    try:
        with torch.no_grad():
            compiled = lamina.compile(model, args, fallback=False, poison=True)
            ir = str(compiled.graph)
            runners = {"cpu": compiled, "reference": lamina.compile(model, args, fallback=False, backend="reference")}
            if program.numba_kernels and native_kernels.compiler() is not None:  # C is the default
                runners["cpu, Numba kernels"] = lamina.compile(model, args, fallback=False, poison=True,
                                                               kernel_language="numba")
            if program.through_dynamo:
                torch._dynamo.reset()
                runners["torch.compile"] = torch.compile(model, backend=LaminaBackend({"poison": True}))
            fresh = tuple(torch.randn_like(a) for a in args)
            for call_args in (args, fresh):
                if program.transposed_calls:
                    call_args = tuple(_strided_like(a) for a in call_args)
                expected = model(*call_args)
                for name, run in runners.items():
                    got = run(*call_args)
                    for k, (g, w) in enumerate(zip(got, expected, strict=True)):
                        error = _rel(g, w)
                        if error > FLOAT_TOL:
                            return Outcome("wrong", f"{name}, output {k}: error {error:.3g}", ir)
    except LaminaError as e:
        return Outcome("refused", f"{type(e).__name__}: {e}"[:400], ir)
    except Exception as e:  # noqa: BLE001 - anything else is a lamina bug
        return Outcome("crash", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}", ir)
    finally:
        if program.through_dynamo:
            torch._dynamo.reset()
    return Outcome("ok", "", ir)


def report(program: Program, outcome: Outcome) -> str:
    """A failing case: the program as Python, lamina's IR of it, and what went wrong."""
    return (f"--- program\n{program.source()}\n--- lamina IR\n{outcome.ir or '(not compiled)'}\n"
            f"--- {outcome.status}: {outcome.detail}\n")
