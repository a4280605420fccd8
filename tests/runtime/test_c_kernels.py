"""What is particular to the cpu backend's C kernels (``kernel_language="c"``, what saved modules carry).

The checks both kernel languages pass (models against eager with poisoned buffers, NaN and signed
zeros in max/min, checked indices and integer division, bit-exact 16-bit conversions, exp within
1 ulp) are the cpu backend's tests, parametrized over ``KERNEL_LANGUAGES``. Tolerance: float32 1e-5
relative (sums accumulate in double, torch sums in float in another order).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.runtime import native_kernels
from tests.conftest import rel_error
from tests.runtime.test_cpu_backend import _Exp

pytestmark = pytest.mark.skipif(native_kernels.compiler() is None, reason="no C compiler on this machine")

F32_TOL = 1e-5


def c_compile(model: nn.Module, args: tuple, **kwargs) -> lamina.CompiledModule:
    return lamina.compile(model, args, kernel_language="c", poison=True, **kwargs)


class _ConcatThenScale(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a * 2, b.exp()], dim=-1).tanh()


def test_a_concatenation_splits_its_loop() -> None:
    a, b = torch.randn(6, 33), torch.randn(6, 70)
    compiled = c_compile(_ConcatThenScale(), (a, b))
    source = next(iter(compiled._executor.kernels.values())).source
    assert "j = 0; j < 33;" in source and "j = 33; j < 103;" in source  # one loop per piece, no select
    assert rel_error(compiled(a, b), _ConcatThenScale()(a, b)) <= F32_TOL


class _TwoNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.LayerNorm(384), nn.LayerNorm(640)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x) * 2, self.b(y) * 2


def test_a_kernel_shared_by_two_sizes_takes_them_as_arguments() -> None:
    model = _TwoNorms()
    x, y = torch.randn(8, 384), torch.randn(8, 640)
    compiled = c_compile(model, (x, y))
    functions = {f.name for f in compiled._executor.target.functions}
    assert len(compiled._executor.kernels) == 2 and len(functions) == 1
    for got, want in zip(compiled(x, y), model(x, y)):
        assert rel_error(got, want) <= F32_TOL


def test_no_compiler_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(native_kernels, "compiler", lambda: None)
    with pytest.raises(native_kernels.NativeBuildError, match="no C compiler"):
        c_compile(_Exp(), (torch.randn(8),))


def test_c_is_the_default_and_numba_where_there_is_no_compiler(monkeypatch) -> None:
    x = torch.randn(8)
    assert "void k_" in "".join(lamina.compile(_Exp(), (x,))._executor.sources().values())
    monkeypatch.setattr(native_kernels, "compiler", lambda: None)
    compiled = lamina.compile(_Exp(), (x,), poison=True)
    assert "@numba.njit" in "".join(compiled._executor.sources().values())
    assert rel_error(compiled(x), _Exp()(x)) <= F32_TOL


def test_a_kernel_language_the_backend_lacks_is_a_clear_error() -> None:
    with pytest.raises(lamina.LaminaError, match="kernel_language='cuda_c' is not one of the cpu backend's: c, numba"):
        lamina.compile(_Exp(), (torch.randn(8),), kernel_language="cuda_c")


def test_a_library_built_before_comes_from_the_cache_and_a_damaged_one_is_rebuilt(tmp_path, monkeypatch) -> None:
    from lamina.codegen.cpu_c import PRELUDE
    from lamina.runtime.native_cpu import native_function

    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path))
    compiled = lamina.compile(_Exp(), (torch.randn(8),), kernel_language="c")
    functions = [native_function(ck.kernel) for ck in compiled._executor.kernels.values()]
    first = native_kernels.build_library(functions, PRELUDE)

    def no_compiler(*args, **kwargs):
        raise AssertionError("compiled again")

    with monkeypatch.context() as m:
        m.setattr(native_kernels.subprocess, "Popen", no_compiler)
        assert native_kernels.build_library(functions, PRELUDE) == first
    build = next((tmp_path / "native" / "builds").glob("*.so"))
    build.write_bytes(b"\x7fELF damaged")
    assert native_kernels.build_library(functions, PRELUDE) == first  # the hash did not match: built again


class _DepthwiseBlock(nn.Module):
    """A padded depthwise convolution with batch norm and ReLU6 (MobileNet's block), stride and dilation
    as given, and a padded 3x3 max pool: the reads a padded window makes through clamped indices."""

    def __init__(self, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, stride=stride, padding=dilation, dilation=dilation, groups=8, bias=False)
        self.norm = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = nn.functional.relu6(self.norm(self.conv(x)))
        return y, nn.functional.max_pool2d(x, 3, stride=2, padding=1)


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_padded_window_reads_are_loads_under_their_guard(stride: int, dilation: int) -> None:
    """The C printer drops the clamps a read's guard (or the loop's range) makes redundant and loads
    under the guard (codegen/guarded_loads.py); in a window's edge rows, where the guard does not change
    along the channel loop, it selects the clamped load by bit masks (``lm_select_f``): the same
    numbers as eager at every border, a NaN or an infinity at the edge included."""
    model = _DepthwiseBlock(stride, dilation).eval()
    with torch.no_grad():
        model.norm.running_var.uniform_(0.5, 2.0)
        model.norm.running_mean.normal_()
    x = torch.randn(2, 8, 17, 23)
    x[0, 0, 0, 0] = float("nan")  # a NaN at a corner reaches exactly the windows that cover it
    x[1, 5, 16, 0] = float("inf")  # the bottom row: read through its clamped index, selected away or kept
    compiled = c_compile(model, (x,))
    sources = "".join(ck.source for ck in compiled._executor.kernels.values())
    assert "lm_select_f(" in sources
    with torch.no_grad():
        for got, want in zip(compiled(x), model(x)):
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
            keep = want.isfinite()
            assert torch.equal(got[want.isinf()], want[want.isinf()]) and rel_error(got[keep], want[keep]) <= F32_TOL


class _TfPaddedBlock(nn.Module):
    """Depthwise stride 2 after padding on the right and bottom only (MobileNetV2's and EfficientNet's
    TF-style "same" padding), batch norm and SiLU; the same followed by a squeeze mean; a batch norm
    on a 7 x 7 map."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=False) for _ in range(2))
        self.norms = nn.ModuleList(nn.BatchNorm2d(8) for _ in range(3))

    def block(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.norms[k](self.convs[k](nn.functional.pad(x, (0, 1, 0, 1)))))

    def forward(self, x: torch.Tensor, x2: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.block(0, x), self.block(1, x2).mean((2, 3)), nn.functional.relu6(self.norms[2](y))


def test_window_edges_and_flattened_rows_run_as_vectorizable_loops() -> None:
    """The stride-2 window's last column runs apart (an affine split), rows at the bottom edge take the
    guarded copy of a loop versioned on the row's guard, a mean over H x W and a batch norm over 7 x 7
    loop over rows: the same numbers as eager at every border, NaN where eager has it."""
    model = _TfPaddedBlock().eval()
    with torch.no_grad():
        for norm in model.norms:
            norm.running_var.uniform_(0.5, 2.0)
            norm.running_mean.normal_()
    x, y = torch.randn(2, 8, 32, 32), torch.randn(2, 8, 7, 7)
    x[1, 3, 31, 31] = float("nan")  # the bottom-right corner: the last window of the last row
    compiled = c_compile(model, (x, x.clone(), y), pipeline="canonicalize,fuse")  # NCHW windows: rows of W
    sources = "".join(ck.source for ck in compiled._executor.kernels.values())
    assert "if ((((o % 16) * 2) >= 0) && " in sources  # a loop versioned on its row's guard
    assert "j = 15; j < 16" in sources and "r_lo = 15; r_lo < 16" in sources  # last columns apart
    assert "o_hi" in sources and "r_hi" in sources  # flattened rows as nested loops
    with torch.no_grad():
        for trial in range(2):
            inputs = (x, x.clone(), y) if trial == 0 else (torch.randn_like(x), torch.randn_like(x), torch.randn_like(y))
            for got, want in zip(compiled(*inputs), model(*inputs)):
                assert torch.equal(got.isnan(), want.isnan())
                keep = ~want.isnan()
                assert rel_error(got[keep], want[keep]) <= F32_TOL


def test_unclamped_index_drops_only_the_clamps_its_guard_proves() -> None:
    from lamina.codegen.guarded_loads import guarded_read, unclamped_index
    from lamina.codegen.kernel import Call, Const, LoopVar, Var
    from lamina.ir.dtypes import DType

    i64, b = DType.i64, DType.bool
    j, r = LoopVar(i64, "j", 56), Var(i64, "r")
    shifted = Call(i64, "sub", (j, Const(i64, 1)))

    def clamp(e):
        return Call(i64, "min", (Call(i64, "max", (e, Const(i64, 0))), Call(i64, "sub", (Const(i64, 56), Const(i64, 1)))))

    inside = Call(b, "logical_and", (Call(b, "ge", (shifted, Const(i64, 0))), Call(b, "lt", (shifted, Const(i64, 56)))))
    index = Call(i64, "add", (Call(i64, "mul", (r, Const(i64, 56))), clamp(shifted)))
    assert unclamped_index(inside, index) == Call(i64, "add", (Call(i64, "mul", (r, Const(i64, 56))), shifted))
    only_low = Call(b, "ge", (shifted, Const(i64, 0)))  # i < n unproven: only the max(i, 0) goes
    upper = Call(i64, "min", (shifted, Call(i64, "sub", (Const(i64, 56), Const(i64, 1)))))
    assert unclamped_index(only_low, index) == Call(i64, "add", (Call(i64, "mul", (r, Const(i64, 56))), upper))
    assert unclamped_index(Call(b, "lt", (shifted, Const(i64, 56))), Call(i64, "max", (shifted, Const(i64, 0)))) is None
    guard, read = guarded_read(inside, index)
    # j - 1 < 56 holds for every j < 56: what is left of the guard is j - 1 >= 0
    assert guard == Call(b, "ge", (shifted, Const(i64, 0)))
    assert read == Call(i64, "add", (Call(i64, "mul", (r, Const(i64, 56))), shifted))


class _ScoresSoftmax(nn.Module):
    """Attention-like scores (a matmul, whose result the softmax may overwrite in place), softmax and
    log_softmax over rows, and a softmax whose last loop also reads another tensor."""

    def forward(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores = a @ b
        return scores.softmax(-1), torch.log_softmax(y, -1), z.softmax(-1) * a[..., :1]


def test_softmax_fills_its_output_in_the_sum_and_scales_it_in_place() -> None:
    """Softmax's exps go straight to the output row as the sum adds them (no scratch row), log_softmax
    fills no row at all; a last loop that reads another tensor keeps its scratch row. Rows with a NaN,
    -inf entries, all -inf, huge values, and lengths the 16 lanes and their remainder both see; outputs
    poisoned before the kernels run."""
    a, b, y = torch.randn(6, 40), torch.randn(40, 1037), torch.randn(6, 1037)
    y[1, 1036] = float("nan")
    y[2, ::3] = float("-inf")
    y[3] = float("-inf")
    y[4] = y[4] * 1e4
    compiled = c_compile(_ScoresSoftmax(), (a, b, y, y.clone()))
    sources = {ck.source.split("(")[0]: ck.source for ck in compiled._executor.kernels.values()}
    (softmax,) = [s for name, s in sources.items() if name.startswith("void k_softmax_") and "_mul_" not in name]
    (log_softmax,) = [s for name, s in sources.items() if name.startswith("void k_log_softmax_")]
    (product,) = [s for name, s in sources.items() if "_mul_" in name]
    assert "malloc" not in softmax and "malloc" not in log_softmax and "malloc" in product
    assert "out0[" in softmax.split("_acc_lanes[l_] +=")[0]  # the exps are stored before the sum adds them
    for trial in range(2):
        inputs = (a, b, y, y.clone()) if trial == 0 else (torch.randn_like(a), torch.randn_like(b), torch.randn_like(y),
                                                         torch.randn_like(y))
        for got, want in zip(compiled(*inputs), _ScoresSoftmax()(*inputs)):
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
            keep = want.isfinite()
            assert rel_error(got[keep], want[keep]) <= F32_TOL


class _RowSums(nn.Module):
    """Softmax and a plain sum over rows."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.softmax(-1), x.sum(-1)


@pytest.mark.parametrize("columns, short", [(200, True), (600, False)])
def test_sums_of_short_rows_join_their_float_lanes_without_double_lanes(columns: int, short: bool) -> None:
    """A sum of at most 256 terms (16 lanes x 16 blocks) joins its float lanes directly; longer ones flush
    into double lanes. Both equal eager on rows with a remainder after the blocks, a NaN, -inf entries,
    all -inf, and values of 1e4 next to small ones (poisoned outputs)."""
    x = torch.randn(7, columns)
    x[1, 5] = float("nan")
    x[2, ::3] = float("-inf")
    x[3] = float("-inf")
    x[4, 0] = 1e4
    compiled = c_compile(_RowSums(), (x,))
    (source,) = [ck.source for ck in compiled._executor.kernels.values()]
    assert ("_wide[" not in source) == short and "_acc_lanes[l_] +=" in source
    for got, want in zip(compiled(x), _RowSums()(x)):
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
        keep = want.isfinite()
        assert rel_error(got[keep], want[keep]) <= F32_TOL
