"""bfloat16 and float16 on the cpu backend: 16-bit storage, float32 arithmetic inside kernels.

Tolerances: a fused kernel rounds once, at its store, where eager PyTorch rounds after every op (as
inductor does, lamina does not emulate those intermediate roundings), so results differ from eager by
a few units in the last place of the type: 2^-8 relative for bfloat16, 2^-11 for float16, times the
ops in a chain. Conversions themselves are bit-exact."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.gemv16_cpu import MAX_ROWS as GEMV16_ROWS
from lamina.models import make_gpt2_stack, make_mlp
from lamina.models.hf import make_hf_llama
from tests.conftest import KERNEL_LANGUAGES, rel_error

TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
HALF = [torch.bfloat16, torch.float16]


def _specials(dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(4096) * 100
    x[:8] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -3e-39, 65504.0])
    x[8:16] = torch.tensor([1.00390625, 1.01171875, -1.00390625, 2.0 ** -14, 6e-8, 3.0e38, 1 + 2 ** -9, 7.0])
    return x.to(dtype)


class _WidenScaleNarrow(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x.float() * 3.0 - 1.0
        return y.to(x.dtype), y  # one narrowing store, one float32 result


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_loads_and_stores_convert_bit_for_bit_as_torch(dtype: torch.dtype, language: str) -> None:
    """Widening is exact and narrowing rounds to nearest even with NaN kept NaN: over NaN, infinities,
    signed zeros, subnormals, overflow and ties, the narrowed result equals torch's bit for bit."""
    x = _specials(dtype)
    compiled = lamina.compile(_WidenScaleNarrow(), (x,), poison=True, kernel_language=language)
    source = "".join(k.source for k in compiled._executor.kernels.values())
    prefix = "bf16" if dtype == torch.bfloat16 else "f16"
    assert f"{prefix}_load(" in source and f"{prefix}_store(" in source
    narrow, wide = compiled(x)
    want_narrow, want_wide = _WidenScaleNarrow()(x)
    assert narrow.dtype == dtype and wide.dtype == torch.float32
    assert torch.equal(narrow.view(torch.int16)[~want_narrow.isnan()], want_narrow.view(torch.int16)[~want_narrow.isnan()])
    assert torch.equal(narrow.isnan(), want_narrow.isnan())
    assert torch.equal(wide.nan_to_num(), want_wide.nan_to_num())


class _CastInside(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16).float() + x.to(torch.float16).float()


def test_a_cast_inside_a_kernel_rounds_there() -> None:
    x = torch.randn(1000) * 10
    x[:3] = torch.tensor([float("nan"), 1e39, 1 + 2 ** -9])
    got, want = lamina.compile(_CastInside(), (x,))(x), _CastInside()(x)
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


class _Rows(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.sum(-1), x.amax(-1), torch.softmax(x, -1), nn.functional.layer_norm(x, (x.shape[-1],))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("language", KERNEL_LANGUAGES)
def test_reductions_and_row_kernels(dtype: torch.dtype, language: str) -> None:
    x = torch.randn(16, 300).to(dtype)
    x[3, 7] = float("nan")
    compiled = lamina.compile(_Rows(), (x,), poison=True, kernel_language=language)
    for got, want in zip(compiled(x), _Rows()(x)):
        assert got.dtype == dtype
        assert torch.equal(got.isnan(), want.isnan())
        keep = ~want.isnan()
        assert rel_error(got[keep].float(), want[keep].float()) <= TOL[dtype]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("make", [make_mlp, lambda: make_gpt2_stack(n_layers=2)], ids=["mlp", "gpt2_stack"])
def test_models_match_eager(dtype: torch.dtype, make) -> None:
    model, args = make()
    model = model.to(dtype).eval()
    args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
    compiled = lamina.compile(model, args, poison=True)
    with torch.no_grad():
        got, want = compiled(*args), model(*args)
    assert got.dtype == dtype
    assert rel_error(got.float(), want.float()) <= TOL[dtype]


def test_a_bf16_transformers_model_under_torch_compile() -> None:
    model, (ids,), kwargs = make_hf_llama()
    model = model.to(torch.bfloat16).eval()
    compiled = torch.compile(model, backend="lamina")
    with torch.no_grad():
        got, want = compiled(ids, **kwargs).logits, model(ids, **kwargs).logits
    assert got.dtype == torch.bfloat16
    assert rel_error(got.float(), want.float()) <= TOL[torch.bfloat16]


class _Linears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(96, 80)
        self.b = nn.Linear(80, 48, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rows", [1, 2, 40])
def test_16_bit_linears_run_the_gemv_for_few_rows_and_torch_for_many(dtype: torch.dtype, rows: int) -> None:
    """Under the Numba kernel language, for one row the 16-bit GEMV of Numba (float32 accumulation,
    one rounding: as torch's own linear, so within one unit in the last place of it); past that
    torch's linear. (The C language's GEMV: tests/runtime/test_gemv.py.)"""
    torch.manual_seed(0)
    model = _Linears().to(dtype).eval()
    x = torch.randn(rows, 96).to(dtype)
    compiled = lamina.compile(model, (x,), poison=True, kernel_language="numba")
    with torch.no_grad():
        got, want = compiled(x), model(x)
    gemv = [name for name in compiled._executor.target.cache.loaded if name.startswith("k_gemv_")]
    assert bool(gemv) == (rows <= GEMV16_ROWS)
    assert got.dtype == dtype
    assert rel_error(got.float(), want.float()) <= TOL[dtype]


def test_the_gemv_decides_per_call_when_the_row_count_is_symbolic() -> None:
    from torch.export import Dim

    torch.manual_seed(0)
    model = _Linears().to(torch.bfloat16).eval()
    x = torch.randn(3, 96).to(torch.bfloat16)
    compiled = lamina.compile(model, (x,), dynamic_shapes=({0: Dim("rows", min=1, max=64)},),
                              kernel_language="numba")
    with torch.no_grad():
        for rows in (1, 7, 33):
            x = torch.randn(rows, 96).to(torch.bfloat16)
            assert rel_error(compiled(x).float(), model(x).float()) <= TOL[torch.bfloat16]
    source = compiled._executor.plan_for([x], compiled._weights).source
    assert f"<= {GEMV16_ROWS}" in source and "torch.mm(" in source  # both paths, chosen per call
