"""Kernels that differ only in sizes share one compiled function (codegen/shared_kernels.py), and
dead statements are dropped before printing (codegen/dead_code.py): fewer and shorter Numba compiles,
the same numbers."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.cpu_numba import numba_source
from lamina.codegen.dead_code import drop_dead_lets
from lamina.codegen.kernel import Buffer, Call, Const, Expr, Kernel, Let, Load, Loop, Store, Var, const, map_body
from lamina.codegen.lower import lower_kernels
from lamina.codegen.reciprocal import MAX_VERSIONED_STATEMENTS, invariant_divisors
from lamina.codegen.shared_kernels import lift_constants, share_structure
from lamina.ir.dtypes import DType


class Stages(nn.Module):
    """Conv stages at three resolutions and widths, each conv then batch norm, ReLU6 and a residual
    add: the same fused kernels at every stage with other sizes."""

    def __init__(self) -> None:
        super().__init__()
        widths = [8, 16, 24]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip([3] + widths, widths))
        self.norms = nn.ModuleList(nn.BatchNorm2d(w) for w in widths)
        self.mixes = nn.ModuleList(nn.Conv2d(w, w, 1) for w in widths)
        self.mix_norms = nn.ModuleList(nn.BatchNorm2d(w) for w in widths)
        for norm in [*self.norms, *self.mix_norms]:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm, mix, mix_norm in zip(self.convs, self.norms, self.mixes, self.mix_norms):
            x = torch.clamp(norm(conv(x)), 0, 6)
            x = x + mix_norm(mix(x))
        return x.mean(dim=(2, 3))


def _fn_names(compiled) -> list[str]:
    return [ck.kernel.name for ck in compiled._executor.kernels.values()]


def test_stages_of_one_structure_share_their_kernels_and_match_torch() -> None:
    torch.manual_seed(0)
    model, x = Stages().eval(), torch.randn(1, 3, 512, 512)  # rows of 256 and 128 at the first two stages
    # NCHW, where a stage's kernel loops over rows of H x W (channels-last's rows are its few channels)
    compiled = lamina.compile(model, (x,), poison=True, pipeline="canonicalize,fuse")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    names = _fn_names(compiled)
    shared = [n for n in set(names) if names.count(n) > 1]
    assert shared, names  # at least one kernel serves several stages
    assert len(set(names)) < len(names)
    for ck in compiled._executor.kernels.values():
        assert len(ck.values) == len(ck.kernel.params)
    # another input size: the same shared functions, new values
    y = torch.randn(1, 3, 256, 384)
    compiled_y = lamina.compile(model, (y,), poison=True, pipeline="canonicalize,fuse")
    with torch.no_grad():
        torch.testing.assert_close(compiled_y(y), model(y), rtol=1e-5, atol=1e-5)


def _substitute(kernel: Kernel, values: tuple) -> Kernel:
    """The generic kernel with its parameters replaced by the values a use passes."""
    table = dict(zip(kernel.params, values))

    def expr(e: Expr) -> Expr:
        if isinstance(e, Var) and e.name in table:
            return Const(e.dtype, table[e.name] if e.dtype is DType.i64 else float(table[e.name]))
        if isinstance(e, Call):
            return Call(e.dtype, e.op, tuple(expr(a) for a in e.args), e.attrs)
        if isinstance(e, Load):
            return Load(e.dtype, e.buffer, expr(e.index))
        return e

    return Kernel(kernel.name, kernel.kind, kernel.buffers, kernel.sizes, expr(kernel.outer), map_body(kernel.body, expr),
                  None if kernel.row_extent is None else expr(kernel.row_extent), kernel.source_ops, kernel.scratch,
                  kernel.checks, kernel.assumptions, ())


def _unnamed(source: str) -> str:
    return re.sub(r"def \w+\(", "def kernel(", source)


def test_a_generic_kernel_with_a_uses_values_is_that_uses_original_kernel() -> None:
    torch.manual_seed(1)
    model, x = Stages().eval(), torch.randn(1, 3, 512, 512)
    compiled = lamina.compile(model, (x,))
    kernels = [k for _, k in lower_kernels(compiled._executor.graph, split_last=True, nested=False)]
    lifted = 0
    for k in kernels:
        generic, values = lift_constants(k)
        if generic.params:
            lifted += 1
            again = numba_source(_substitute(generic, values), parallel=True)
            assert _unnamed(again) == _unnamed(numba_source(k, parallel=True))
    assert lifted >= 3


def _row_kernel(width: int, per_element_divisor: int | None = None) -> Kernel:
    """``out[o, j] = x[o, j] * s[o // 4]`` (or ``s[j // d]`` when a per-element divisor is given)."""
    o, j = Var(DType.i64, "o"), Var(DType.i64, "j")
    flat = Call(DType.i64, "add", (Call(DType.i64, "mul", (o, const(width))), j))
    scale_index = Call(DType.i64, "floordiv", (j, const(per_element_divisor))) if per_element_divisor else \
        Call(DType.i64, "floordiv", (o, const(4)))
    body = (Loop("j", const(width), (Let("t0", flat),
                                      Let("t1", Call(DType.f32, "mul", (Load(DType.f32, "x", Var(DType.i64, "t0")),
                                                                         Load(DType.f32, "s", scale_index)))),
                                      Store("out", Var(DType.i64, "t0"), Var(DType.f32, "t1")))),)
    buffers = (Buffer("x", DType.f32, const(64 * width)), Buffer("s", DType.f32, const(16)),
               Buffer("out", DType.f32, const(64 * width), output=True))
    return Kernel(f"k_mul_{width}", "pointwise", buffers, (), const(64), body, const(width))


def test_rows_of_other_widths_share_one_kernel_with_the_row_division_lifted() -> None:
    a, b = _row_kernel(512), _row_kernel(256)
    shared = share_structure([a, b])
    assert shared[0].kernel == shared[1].kernel and shared[0].kernel.params
    assert shared[0].values != shared[1].values
    assert "range(c" in numba_source(shared[0].kernel, parallel=True)


def test_short_rows_keep_their_extent_and_are_not_shared() -> None:
    """A known trip count of 56 unrolls into whole vectors; as a variable it ran 3x slower."""
    a, b = _row_kernel(56), _row_kernel(28)
    generic, _ = lift_constants(a)
    assert "range(56)" in numba_source(generic, parallel=True) and "o * 56" in numba_source(generic, parallel=True)
    assert [s.kernel for s in share_structure([a, b])] == [a, b]


def test_a_per_element_division_keeps_every_constant_and_is_not_shared() -> None:
    a, b = _row_kernel(512, per_element_divisor=7), _row_kernel(512, per_element_divisor=14)
    assert lift_constants(a) == (a, ())
    shared = share_structure([a, b])
    assert shared[0].kernel == a and shared[1].kernel == b and not shared[0].values


class _NormAcrossChannels(nn.Module):
    """ConvNeXt's block norm: a layer norm over the channels of NCHW tensors read through a permute."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in (128, 256))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norms[0](x.permute(0, 2, 3, 1)), self.norms[1](y.permute(0, 2, 3, 1))


def test_rows_read_across_the_layout_keep_their_strides_and_are_not_shared() -> None:
    """A row of channels 8 x 8 floats apart, read with a variable stride, ran 2x slower."""
    model, args = _NormAcrossChannels(), (torch.randn(1, 128, 8, 8), torch.randn(1, 256, 4, 4))
    compiled = lamina.compile(model, args, poison=True)
    names = _fn_names(compiled)
    assert len(set(names)) == 2 and not any(ck.values for ck in compiled._executor.kernels.values())
    with torch.no_grad():
        for got, want in zip(compiled(*args), model(*args)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_strided_inner_read_is_found_through_lets() -> None:
    from lamina.codegen.index_kinds import strided_inner_reads

    def kernel(step: int) -> Kernel:
        j = Var(DType.i64, "j")
        body = (Loop("j", const(16), (Let("t0", Call(DType.i64, "mul", (j, const(step)))),
                                     Store("out", Call(DType.i64, "add", (Var(DType.i64, "o"), j)),
                                           Load(DType.f32, "x", Var(DType.i64, "t0"))))),)
        return Kernel("k", "pointwise", (Buffer("x", DType.f32, const(16 * step)),
                                         Buffer("out", DType.f32, const(32), output=True)), (), const(1), body)

    assert strided_inner_reads(kernel(3)) and not strided_inner_reads(kernel(1))


def test_a_kernel_used_once_keeps_its_constants() -> None:
    a = _row_kernel(512)
    assert share_structure([a, a]) == [share_structure([a])[0]] * 2
    assert share_structure([a])[0].kernel == a


def test_kernels_on_either_side_of_the_serial_threshold_are_not_shared() -> None:
    a, b = _row_kernel(512), _row_kernel(256)
    shared = share_structure([a, b], key=lambda k: k.name)
    assert [s.kernel for s in shared] == [a, b]


def test_a_split_loop_keeps_its_constants() -> None:
    j = Var(DType.i64, "j")
    body = (Loop("j", const(64), (Let("c", Call(DType.bool, "lt", (j, const(32)))),
                                   Store("out", j, Call(DType.f32, "where", (Var(DType.bool, "c"), Const(DType.f32, 1.0),
                                                                             Const(DType.f32, 2.0)))))),)
    k = Kernel("k_cat", "pointwise", (Buffer("out", DType.f32, const(64), output=True),), (), const(1), body, const(64))
    assert lift_constants(k) == (k, ())


def test_dead_lets_are_dropped_and_live_ones_kept() -> None:
    o = Var(DType.i64, "o")
    body = (Let("a", Load(DType.f32, "x", o)),
            Let("unused", Call(DType.f32, "exp", (Var(DType.f32, "a"),))),
            Let("feeds_unused", Call(DType.f32, "mul", (Var(DType.f32, "a"), Var(DType.f32, "a")))),
            Let("chain", Call(DType.f32, "add", (Var(DType.f32, "feeds_unused"), Const(DType.f32, 1.0)))),
            Let("b", Call(DType.f32, "neg", (Var(DType.f32, "a"),))),
            Store("out", o, Var(DType.f32, "b")))
    k = Kernel("k", "pointwise", (Buffer("x", DType.f32, const(8)), Buffer("out", DType.f32, const(8), output=True)),
               (), const(8), body)
    kept = [s.name for s in drop_dead_lets(k).body if isinstance(s, Let)]
    assert kept == ["a", "b"]


class SqueezeExcite(nn.Module):
    """A conv + batch norm + SiLU whose output is both averaged (the squeeze) and kept: one kernel with
    a mean and an element output, which used to compute the convolution twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.norm = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = nn.functional.silu(self.norm(self.conv(x)))
        return y, y.mean(dim=(2, 3))


def test_a_row_read_from_scratch_is_not_computed_again() -> None:
    torch.manual_seed(2)
    model, x = SqueezeExcite().eval(), torch.randn(1, 16, 14, 14)
    compiled = lamina.compile(model, (x,), poison=True, kernel_language="numba")  # reads its Numba source
    with torch.no_grad():
        for got, want in zip(compiled(x), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    source = "".join(compiled._executor.sources().values())
    assert source.count("exp32(") == 1, source  # SiLU's exp once: the element loop reads the scratch row


@pytest.mark.parametrize("statements", [4, MAX_VERSIONED_STATEMENTS + 1])
def test_only_short_loops_are_versioned_for_reciprocals(statements: int) -> None:
    j = Var(DType.i64, "j")
    lets = tuple(Let(f"t{i}", Call(DType.f32, "add", (Load(DType.f32, "x", j), Const(DType.f32, float(i)))))
                 for i in range(statements - 1))
    loop = Loop("j", const(16), lets + (Store("out", j, Call(DType.f32, "div", (Var(DType.f32, "t0"),
                                                                                Var(DType.f32, "d")))),))
    assert bool(invariant_divisors(loop)) == (statements <= MAX_VERSIONED_STATEMENTS)


class NormAct(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.norm.running_mean.uniform_(-0.5, 0.5)
        self.norm.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.norm(x)) + 1.0


@pytest.mark.parametrize("size", [7, 14])
def test_short_rows_of_an_nchw_kernel_span_the_plane(size: int) -> None:
    """Rows of 14 (the last dim) become rows of 14 x 14 = 196, one per channel; at 7 x 7 (49 < 128)
    the rows span the channels too only if enough rows are left, else stay as they were."""
    torch.manual_seed(size)
    model, x = NormAct(32).eval(), torch.randn(2, 32, size, size)
    compiled = lamina.compile(model, (x,), poison=True, kernel_language="numba")  # reads its Numba source
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    source = "".join(compiled._executor.sources().values())
    if size == 14:
        assert "range(196)" in source, source


def test_rows_are_not_merged_where_an_index_would_be_divided() -> None:
    """A bias broadcast along H of a 14-wide NCHW tensor needs ``j % 14`` in merged rows: kept per W."""
    from lamina.codegen.lower import lower_region

    class AddRowBias(nn.Module):
        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            return x * 2.0 + bias

    x, bias = torch.randn(1, 32, 14, 14), torch.randn(14)
    compiled = lamina.compile(AddRowBias(), (x, bias), poison=True)
    torch.testing.assert_close(compiled(x, bias), AddRowBias()(x, bias), rtol=1e-5, atol=1e-5)
    for op in compiled._executor.graph.ops:
        if op.name == "fused":
            kernel = lower_region(op, [f"in{i}" for i in range(len(op.operands))], ["out0"], split_last=True)
            assert kernel.row_extent == const(14)


def test_expression_hashes_are_cached_but_never_copied_or_pickled() -> None:
    """Kernel expressions hash once per node (lowering hashed deep trees millions of times); the cached
    value stays out of copies and pickles, since string hashes differ between processes."""
    import copy
    import pickle

    x = Var(DType.i64, "o")
    tree = Call(DType.f32, "add", (Load(DType.f32, "in0", Call(DType.i64, "mul", (x, const(3)))), Const(DType.f32, 1.0)))
    first = hash(tree)
    assert hash(tree) == first and "_hash" in tree.__dict__
    for clone in (copy.deepcopy(tree), pickle.loads(pickle.dumps(tree))):
        assert "_hash" not in clone.__dict__ and clone == tree and hash(clone) == first
    assert {tree: 1}[Call(DType.f32, "add", tree.args)] == 1
