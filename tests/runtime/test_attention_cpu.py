"""The cpu backend's fused attention kernels against torch's sdpa: the C row kernel (codegen/attention_c.py,
float32 under kernel_language="c") and the Numba one (codegen/attention_cpu.py: float64, and "numba")."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lamina


@pytest.fixture(params=["c", "numba"], autouse=True)
def language(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs under both kernel languages (lamina.compile's default is C)."""
    original = lamina.compile

    def compile_in(model: nn.Module, args: tuple, **kwargs: object) -> object:
        return original(model, args, kernel_language=request.param, **kwargs)

    monkeypatch.setattr(lamina, "compile", compile_in)
    return request.param


class Attend(nn.Module):
    def __init__(self, causal: bool = False, scale: float | None = None, gqa: bool = False,
                 transpose_q: bool = False) -> None:
        super().__init__()
        self.causal, self.scale, self.gqa, self.transpose_q = causal, scale, gqa, transpose_q

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.transpose_q:  # q's last dim strided: the kernel must make it contiguous first
            q = q.transpose(-1, -2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal, scale=self.scale,
                                             enable_gqa=self.gqa)
        return out * 1.0  # a consumer kernel, so the attention result lives in the arena


def _check(model: nn.Module, args: tuple, dtype: torch.dtype = torch.float32) -> None:
    compiled = lamina.compile(model, args, poison=True)
    plan = compiled._executor.plan_for(list(args), compiled._weights)
    assert "k_attention" not in plan.source and "scaled_dot_product_attention" not in plan.source
    assert compiled._executor.natives, "the attention op should run as the cpu kernel"
    c_kernel = getattr(compiled._executor.target, "own", {})
    assert ("lamina_attention_f32" in c_kernel) == (compiled.options.kernel_language == "c" and dtype == torch.float32)
    for trial in range(2):
        fresh = tuple(torch.randn_like(a) if a.is_floating_point() else a for a in args) if trial else args
        got, want = compiled(*fresh), model(*fresh)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def qkv(b: int = 2, h: int = 4, t: int = 5, s: int = 7, d: int = 16, hk: int | None = None,
        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    hk = hk or h
    return (torch.randn(b, h, t, d, dtype=dtype), torch.randn(b, hk, s, d, dtype=dtype),
            torch.randn(b, hk, s, d + 3, dtype=dtype))


@pytest.mark.parametrize("causal", [False, True])
def test_plain_and_causal(causal: bool) -> None:
    _check(Attend(causal=causal), qkv(t=6, s=6 if causal else 9))


def test_causal_with_more_keys_than_queries_is_top_left_aligned_like_torch() -> None:
    _check(Attend(causal=True), qkv(t=3, s=8))


def test_explicit_scale_and_float64() -> None:
    _check(Attend(scale=0.3), qkv(dtype=torch.float64), torch.float64)


def test_grouped_query_heads() -> None:
    _check(Attend(causal=True, gqa=True), qkv(h=6, hk=2, t=5, s=5))


def test_boolean_mask_broadcast_with_a_fully_masked_row_gives_zeros() -> None:
    q, k, v = qkv(t=4, s=6)
    mask = torch.rand(2, 1, 4, 6) > 0.4
    mask[1, 0, 2] = False  # every key masked: torch returns zeros for the row
    _check(Attend(), (q, k, v, mask))


def test_additive_mask() -> None:
    q, k, v = qkv(t=4, s=6)
    mask = torch.randn(4, 6)
    mask[0, :3] = float("-inf")
    _check(Attend(), (q, k, v, mask))


def test_strided_inputs_from_the_caller() -> None:
    q, k, v = qkv(t=16, s=7, d=5)
    _check(Attend(transpose_q=True), (q.transpose(-1, -2).contiguous(), k, v))


def test_nan_in_a_score_row_propagates_like_torch() -> None:
    q, k, v = qkv()
    q[0, 1, 2, 3] = float("nan")
    compiled = lamina.compile(Attend(), (q, k, v))
    got, want = compiled(q, k, v), Attend()(q, k, v)
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-5)


def test_gpt2_style_qkv_views_need_no_copies() -> None:
    """q, k, v are views into one fused projection; the output is laid out for the head merge."""
    from lamina.models import make_gpt2_stack

    model, args = make_gpt2_stack(n_layers=1, batch=2, seq=9)
    compiled = lamina.compile(model, args, poison=True)
    plan = compiled._executor.plan_for(list(args), compiled._weights)
    assert "_strided(" not in plan.source and ".permute(" not in plan.source
    torch.testing.assert_close(compiled(*args), model(*args), rtol=1e-5, atol=1e-5)


def test_large_attention_runs_as_torch_kernel_into_the_arena() -> None:
    args = qkv(b=2, h=4, t=64, s=64, d=32)
    compiled = lamina.compile(Attend(causal=True), args, poison=True)
    plan = compiled._executor.plan_for(list(args), compiled._weights)
    assert ".copy_(torch.nn.functional.scaled_dot_product_attention(" in plan.source
    torch.testing.assert_close(compiled(*args), Attend(causal=True)(*args), rtol=1e-5, atol=1e-5)


class ComputedMask(nn.Module):
    """A mask the graph computes: kernels write it into the arena, after the plan is built."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.bias = nn.Embedding(9, 4)  # T5-style relative position bias, one column per head

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t, s = q.shape[2], k.shape[2]
        if self.kind == "bool_rows":  # as transformers 5 builds bidirectional masks under torch.export: stride 0
            mask = (torch.arange(t)[None, None, :, None] >= 2).expand(1, 1, t, s)  # along keys; rows 0, 1 masked
        else:  # a float mask read through a permute: its key axis is not the contiguous one
            rel = (torch.arange(s)[None, :] - torch.arange(t)[:, None]).clamp(-4, 4) + 4
            mask = self.bias(rel).permute(2, 0, 1).unsqueeze(0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask) * 1.0


@pytest.mark.parametrize("kind", ["bool_rows", "permuted_bias"])
def test_masks_computed_in_the_graph_are_read_after_they_are_written(kind: str) -> None:
    """Regression: a mask whose key axis is not contiguous was copied when the plan was built, before
    the kernel writing it had run, so attention read whatever the arena held (BERT, BART, ViT, T5)."""
    model = ComputedMask(kind).eval()
    args = qkv(b=2, h=4, t=6, s=6, d=8)
    args = (args[0], args[1], args[2][..., :8].contiguous())
    compiled = lamina.compile(model, args, poison=True)
    assert compiled._executor.natives, "the attention op should run as the cpu kernel"
    for trial in range(3):
        fresh = tuple(torch.randn_like(a) for a in args) if trial else args
        with torch.no_grad():
            torch.testing.assert_close(compiled(*fresh), model(*fresh), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_kind", ["bool", "add"])
def test_keys_behind_the_mask_are_not_read(mask_kind: str) -> None:
    """A preallocated KV cache holds no data past its filled length: the masked keys and their value rows
    are not read, so even a NaN there leaves the rows as torch computes them with zeros in its place."""
    q, k, v = qkv(b=1, h=2, t=3, s=10, d=8)
    v = v[..., :8].contiguous()
    visible = torch.arange(10)[None, :] <= torch.arange(5, 8)[:, None]  # rows 0..2 see keys up to 5..7
    mask = visible if mask_kind == "bool" else torch.zeros(3, 10).masked_fill(~visible, float("-inf"))
    clean = Attend()(q, k, v, mask)
    k[:, :, 8:], v[:, :, 8:] = float("nan"), float("nan")
    compiled = lamina.compile(Attend(), (q, k, v, mask), poison=True)
    got = compiled(q, k, v, mask)
    assert not got.isnan().any()
    torch.testing.assert_close(got, clean, rtol=1e-5, atol=1e-5)
