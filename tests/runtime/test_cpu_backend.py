"""The cpu backend (fused Numba kernels + library calls) against eager PyTorch, with poisoned buffers."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

import lamina
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp
from lamina.models.hf import make_hf_gpt2, make_hf_llama
from tests.conftest import KERNEL_LANGUAGES, rel_error
from tests.frontends.test_models import _fresh_like

F32_TOL = 1e-5  # float32; kernels sum in float64, torch in float32 with another order


@pytest.mark.parametrize("factory", [make_mlp, make_gpt2_stack, make_llama_block, make_cnn],
                         ids=["mlp", "gpt2_stack", "llama_block", "cnn"])
@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_cpu_backend_matches_eager(factory, language: str) -> None:
    model, args = factory()
    compiled = lamina.compile(model, args, backend="cpu", poison=True, kernel_language=language)
    for trial in range(3):
        inputs = args if trial == 0 else _fresh_like(args)
        with torch.no_grad():
            expected = model(*inputs)
        assert rel_error(compiled(*inputs), expected) <= F32_TOL


@pytest.mark.parametrize("factory", [make_hf_gpt2, make_hf_llama], ids=["gpt2", "llama"])
def test_cpu_backend_transformers(factory) -> None:
    model, args, kwargs = factory()
    compiled = lamina.compile(model, args, example_kwargs=kwargs, backend="cpu", poison=True)
    for trial in range(2):
        ids = args[0] if trial == 0 else torch.randint(0, 128, args[0].shape)
        with torch.no_grad():
            expected = model(ids, **kwargs).logits
        assert rel_error(compiled(ids, **kwargs).logits, expected) <= F32_TOL


def test_dynamic_batch_on_cpu_reuses_kernels() -> None:
    from torch.export import Dim

    model, (idx,) = make_gpt2_stack(batch=2, n_layers=2)
    compiled = lamina.compile(model, (idx,), dynamic_shapes=({0: Dim("batch")},), poison=True)
    executor = compiled._executor
    kernels = {id(ck.fn) for ck in executor.kernels.values()}  # C kernels' ctypes functions do not hash
    for batch in (1, 3):
        x = torch.randint(0, 128, (batch, idx.shape[1]))
        with torch.no_grad():
            assert rel_error(compiled(x), model(x)) <= F32_TOL
    assert {id(ck.fn) for ck in executor.kernels.values()} == kernels
    assert len(executor.plans) == 1 and executor.plan_builds == 1  # one plan, generic in the batch


def test_outputs_do_not_alias_between_calls() -> None:
    model, args = make_mlp()
    compiled = lamina.compile(model, args)
    first = compiled(*args)
    snapshot = first.clone()
    compiled(*_fresh_like(args))
    assert torch.equal(first, snapshot)


def test_identical_layers_share_kernels_and_memory_is_reused() -> None:
    model, args = make_gpt2_stack(n_layers=4)
    compiled = lamina.compile(model, args)
    executor = compiled._executor
    names = [ck.kernel.name for ck in executor.kernels.values()]
    assert len(names) > len(set(names))           # 4 layers, one set of kernels
    plan = executor.plan_for(list(args), compiled._weights)
    assert plan.memory.peak < plan.memory.naive / 2


@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_wrapper_and_kernels_are_inspectable(language: str) -> None:
    model, args = make_gpt2_stack(n_layers=1)
    compiled = lamina.compile(model, args, kernel_language=language)
    executor = compiled._executor
    sources = executor.sources()
    assert any("layer_norm" in name for name in sources)
    signature = {"numba": "numba.prange", "c": "void k_"}[language]
    assert all(signature in src for src in sources.values())
    plan = executor.plan_for(list(args), compiled._weights)
    # GEMMs: torch's, or on a CPU where it is faster the C kernels' own (runtime/native_cpu.py)
    assert plan.source.startswith("def run(inputs, sizes):") and ("torch.mm(" in plan.source or (
        language == "c" and executor.target.gemm.mode != "none" and "lamina_gemm_f32" in executor.target.own))


def test_softmax_computes_each_exp_once_through_a_scratch_row() -> None:
    model, x = torch.nn.Softmax(dim=-1), torch.randn(64, 300)
    x[3, 7] = float("nan")
    x[5] = float("-inf")
    compiled = lamina.compile(model, (x,), poison=True, kernel_language="numba")  # reads its Numba source
    source = next(iter(compiled._executor.kernels.values())).source
    assert "s0 = np.empty(300, np.float32)" in source and source.count("exp32(") == 1
    got, want = compiled(x), model(x)
    assert torch.equal(got.isnan(), want.isnan())
    keep = ~want.isnan()
    assert rel_error(got[keep], want[keep]) <= F32_TOL


class _ReturnsAViewOfAnIntermediate(torch.nn.Module):
    """Like a KV cache output: a transposed intermediate returned while later kernels keep running."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x * 2.0 + 1.0).transpose(1, 2)
        y = torch.tanh(x) @ self.w  # GEMM results and kernels after `key` reuse the arena
        for _ in range(3):
            y = torch.sigmoid(y) @ self.w
        return key, y


def test_an_output_viewing_an_intermediate_is_not_overwritten_by_later_kernels() -> None:
    model, x = _ReturnsAViewOfAnIntermediate(), torch.randn(2, 5, 3)
    compiled = lamina.compile(model, (x,), poison=True)
    with torch.no_grad():
        want = model(x)
    for got, want in zip(compiled(x), want):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class _Powers(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x ** 3 + 0.5 * x ** 2 - x.abs() ** 2.5 + x ** 4


def test_small_integer_powers_are_products_and_match_eager() -> None:
    model, x = _Powers(), torch.randn(4, 300)
    compiled = lamina.compile(model, (x,), poison=True, kernel_language="numba")  # reads its Numba source
    source = "".join(compiled._executor.sources().values())
    assert source.count("**") == 1 and "(t1 * t1 * t1)" in source  # only the 2.5 power calls pow
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


class _NumpyT(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x.T @ x) + y.mT.sum(0)[:, :3] * 0.5  # x.T on a matrix: aten.numpy_T


def test_numpy_style_transpose() -> None:
    model, args = _NumpyT(), (torch.randn(5, 3), torch.randn(2, 4, 3))
    compiled = lamina.compile(model, args, poison=True)
    torch.testing.assert_close(compiled(*args), model(*args), rtol=1e-5, atol=1e-5)


def test_a_reduction_over_size_one_axes_reads_its_own_rows() -> None:
    """Regression: with every reduced axis of size 1 (a 1x1 feature map's mean, EfficientNet's squeeze),
    a value read at the reduction's index and at the element index had equal dims but other flat offsets;
    the memo returned one for the other and the kernel read an undefined loop variable."""
    class SqueezeExcite(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.silu(x)
            return y * y.mean((2, 3), keepdim=True)

    x = torch.randn(2, 3, 1, 1)
    compiled = lamina.compile(SqueezeExcite(), (x,), poison=True)
    assert rel_error(compiled(x), SqueezeExcite()(x)) <= 1e-6


@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
@pytest.mark.parametrize("rows", [4, 1030])
def test_a_sum_over_a_size_one_axis_read_back_through_unsqueeze(rows: int, language: str) -> None:
    """Regression (found by a row-kernel fuzz run): ``(x * y).sum(-1).unsqueeze(-1) * x`` over [rows, 1] read
    the sum at ``o * 1 + j``, ``j`` the size-1 axis's loop, which the row check refused as another row
    ("a fusion bug"); a loop of one iteration now indexes as 0."""
    class RowScale(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (x * y).sum(-1).log1p().exp().unsqueeze(-1) * x

    x, y = torch.rand(rows, 1), torch.rand(rows, 1)
    compiled = lamina.compile(RowScale(), (x, y), poison=True, kernel_language=language)
    assert rel_error(compiled(x, y), RowScale()(x, y)) <= 1e-5


def test_one_plan_serves_every_length_and_its_arena_grows_geometrically() -> None:
    """A dynamic length with a new value per call (a decode loop) builds one plan; the values whose size
    follows the length live in an arena that grows to the next power of two when a call passes it."""
    from torch.export import Dim

    model, (idx,) = make_gpt2_stack(batch=1, seq=64, n_layers=2)  # 64 positions
    compiled = lamina.compile(model, (idx,), dynamic_shapes=({1: Dim("T", min=2, max=64)},), poison=True)
    with torch.no_grad():
        for t in range(2, 65):
            x = torch.randint(0, 64, (1, t))
            assert rel_error(compiled(x), model(x)) <= 1e-5
        info = compiled.plan_cache
        assert info.plans == 1 and info.builds == 1
        assert info.arena_grows == 6  # capacities 2, 4, 8, 16, 32, 64
        (plan,) = compiled._executor.plans.values()
        assert plan.growing.capacity == (64,)
        assert info.arena_bytes == plan.arena.numel() + plan.growing.buffer.numel()
        x = torch.randint(0, 64, (1, 3))  # a short call after long ones: the large layout serves it
        assert rel_error(compiled(x), model(x)) <= 1e-5
        assert compiled.plan_cache.arena_grows == 6


def test_plans_per_set_of_sizes_are_a_bounded_cache() -> None:
    """A graph planned per set of sizes (its sizes have no Python form) keeps at most max_plans plans
    and their arenas; an evicted shape is planned again and still right."""
    from torch.export import Dim

    from lamina.runtime.program import MAX_PLANS

    model, (idx,) = make_gpt2_stack(batch=1, seq=8, n_layers=2)
    compiled = lamina.compile(model, (idx,), dynamic_shapes=({1: Dim("T", min=2, max=64)},), poison=True)
    compiled._executor.generic = False  # what build_plan falls back to for such a graph
    lengths = list(range(2, 2 + MAX_PLANS + 6))
    first_arena = None
    with torch.no_grad():
        for t in lengths:
            x = torch.randint(0, 64, (1, t))
            assert rel_error(compiled(x), model(x)) <= 1e-5
            if first_arena is None:
                first_arena = weakref.ref(next(iter(compiled._executor.plans.values())).arena)
        info = compiled.plan_cache
        assert info.plans == info.limit == MAX_PLANS and info.builds == len(lengths)
        assert list(compiled._executor.plans) == [(t,) for t in lengths[-MAX_PLANS:]]
        gc.collect()
        assert first_arena() is None  # the evicted plan's arena is freed: memory stays bounded
        assert info.arena_bytes == sum(p.arena.numel() for p in compiled._executor.plans.values())
        x = torch.randint(0, 64, (1, lengths[0]))  # evicted long ago: planned again
        assert rel_error(compiled(x), model(x)) <= 1e-5
        assert compiled.plan_cache.builds == len(lengths) + 1 and compiled.plan_cache.plans == MAX_PLANS


class _Extremes(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.amax(-1), x.amin(-1), x.max(-1).values, torch.log_softmax(x, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_max_and_min_reductions_propagate_nan_and_vectorize(dtype: torch.dtype, language: str) -> None:
    """Float max/min reductions run on llvm.maximum/minimum (NaN in, NaN out, as torch): rows with one
    NaN, all NaN, all -inf, +inf, and signed zeros, at a length the vector loop and its tail both see."""
    x = torch.randn(11, 1027, dtype=dtype)
    x[1, 1026] = float("nan")  # in the tail
    x[2, 0] = float("nan")
    x[3] = float("nan")
    x[4] = float("-inf")
    x[5, 17] = float("inf")
    x[6] = 0.0
    x[6, ::2] = -0.0
    x[7, 500] = float("-inf")
    x[8] = -0.0
    x[8, 1025] = 0.0  # the one +0 in the tail: max +0, min -0
    x[9] = -x[9].abs()
    x[9, 3] = -float("nan")  # a NaN with its sign bit set (what 0 * -inf gives on x86)
    x[10] = x[10].abs() + 1.0
    x[10, 700] = 0.0
    x[10, 701] = -0.0  # min over signed zeros among positives: -0
    compiled = lamina.compile(_Extremes(), (x,), poison=True, kernel_language=language)
    sources = "".join(k.source for k in compiled._executor.kernels.values())
    if language == "numba":
        suffix = "32" if dtype == torch.float32 else "64"
        assert f"fmaximum{suffix}(" in sources and f"fminimum{suffix}(" in sources
    outputs = compiled(x)
    for got, want in zip(outputs, _Extremes()(x)):
        assert torch.equal(got.isnan(), want.isnan())
        keep = ~want.isnan()
        assert torch.allclose(got[keep], want[keep], rtol=1e-5, atol=0), (got, want)
    # signed zeros as IEEE 754's maximum and minimum order them, +0 above -0, wherever they stand (torch's
    # own max returns either zero, by the order it meets them)
    amax, amin = outputs[0], outputs[1]
    assert [bool(amax[r].signbit()) for r in (6, 8)] == [False, False] and amax[6] == 0 and amax[8] == 0
    assert [bool(amin[r].signbit()) for r in (6, 8, 10)] == [True, True, True] and amin[10] == 0


class _DivideByRowSum(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.sum(-1, keepdim=True)


@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_division_by_a_row_constant_multiplies_only_where_the_reciprocal_is_normal(language: str) -> None:
    """Rows whose sum is ordinary take x * (1/sum); a zero, subnormal, huge, infinite or NaN sum takes
    the division itself, so those rows match torch exactly (1/subnormal would overflow to inf)."""
    x = torch.rand(8, 300) + 0.5
    x[1] = 0.0                      # 0/0: NaN
    x[2] = 1e-41                    # subnormal sum
    x[3] = 2.0 ** 119               # sum near the float32 limit (exact in any order): 1/sum is subnormal
    x[4, 5] = float("inf")
    x[5, 9] = float("nan")
    x[6] = -x[6]
    compiled = lamina.compile(_DivideByRowSum(), (x,), poison=True, kernel_language=language)
    source = next(iter(compiled._executor.kernels.values())).source
    assert ("_inv = np.float32(1.0) /" if language == "numba" else "_inv = 1.0f /") in source
    got, want = compiled(x), _DivideByRowSum()(x)
    assert torch.equal(got.isnan(), want.isnan())
    for row in (1, 2, 3, 4, 5):  # the division path: bit for bit as torch's division by the same sum
        assert torch.equal(got[row].nan_to_num(), (x[row] / x[row].double().sum().float()).nan_to_num())
    keep = ~want.isnan()
    assert rel_error(got[keep], want[keep]) <= F32_TOL


@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_exp_is_within_one_ulp_down_to_subnormal_results(language: str) -> None:
    """The kernels' float32 exp against float64 exp rounded to float32, from where it underflows to
    zero to where it overflows, and at NaN and the infinities."""
    x = torch.cat([torch.linspace(-110.0, 90.0, 1 << 20), torch.tensor([float("nan"), float("inf"), -float("inf")])])
    got = lamina.compile(_Exp(), (x,), kernel_language=language)(x)
    want = x.double().exp().float()
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    assert torch.equal(got == 0, want == 0)
    finite = want.isfinite() & (want > 0)
    ulps = (got[finite].view(torch.int32).long() - want[finite].view(torch.int32).long()).abs()
    assert ulps.max() <= 1
    assert (want[finite] < 1.1754944e-38).sum() > 1000  # the subnormal range was covered


class _Exp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class _Log(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_log_is_within_one_ulp_from_subnormals_to_the_largest_float(language: str) -> None:
    """The kernels' float32 log against float64 log rounded to float32: every power of two from the
    smallest subnormal to 2^127 with 1024 points between each, values around 1 (where log is near 0),
    and zero, negatives, the infinities and NaN."""
    exponents = torch.arange(-149, 128, dtype=torch.float64)
    spread = torch.linspace(1.0, 2.0, 1025, dtype=torch.float64)[:-1]
    near_one = torch.linspace(0.99, 1.01, 100_001, dtype=torch.float64)
    special = torch.tensor([0.0, -0.0, -1.0, -1e-40, float("inf"), -float("inf"), float("nan"), 3.4028235e38])
    x = torch.cat([(2.0 ** exponents[:, None] * spread).flatten(), near_one, special.double()]).float()
    compiled = lamina.compile(_Log(), (x,), kernel_language=language)
    assert "log32(" in "".join(k.source for k in compiled._executor.kernels.values())  # the vectorizable one
    got, want = compiled(x), x.double().log().float()
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    assert torch.equal(got[want.isinf()], want[want.isinf()])
    finite = want.isfinite()
    ulps = (got[finite].view(torch.int32).long() - want[finite].view(torch.int32).long()).abs()
    assert ulps.max() <= 1
    assert (x[finite] < 1.1754944e-38).sum() > 20000  # the subnormal range was covered
