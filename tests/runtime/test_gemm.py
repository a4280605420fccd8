"""The C GEMM of the cpu backend (``codegen/gemm_c.py``): float32 linears past the GEMV's rows, and
matmuls by a weight stored [in, out] (GPT-2's Conv1D), on a weight packed once per plan. The backend
picks it on AMD CPUs with AVX-512 (``native_cpu.c_gemm_is_faster``); these tests force it on wherever
the CPU has AVX-512. Tolerance: float32, 1e-5 relative to the output's scale (another summation order
than MKL's)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.gemm_c import pack_weight
from lamina.runtime import native_cpu
from lamina.runtime.native_kernels import compiler, cpu_features
from tests.conftest import rel_error

pytestmark = pytest.mark.skipif(compiler() is None or "avx512f" not in cpu_features(),
                                reason="the C GEMM needs a C compiler and AVX-512")
TOL = 1e-5
GEMM_CALL = re.compile(r"\bG\d+\(")


@pytest.fixture(autouse=True)
def c_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_cpu, "c_gemm_is_faster", lambda: True)


class _Linears(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.a = nn.Linear(97, 83, bias=bias)
        self.b = nn.Linear(83, 45, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _source(compiled, x: torch.Tensor) -> str:
    return compiled._executor.plan_for([x], compiled._weights).source


def test_the_packed_weight_is_tiles_of_32_output_channels() -> None:
    w = torch.randn(45, 7)
    packed = pack_weight(w)
    assert packed.shape == (2, 7, 32)
    assert torch.equal(packed[0], w[:32].t()) and torch.equal(packed[1, :, :13], w[32:].t())
    assert not packed[1, :, 13:].any()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pipeline", ["canonicalize,fuse", "canonicalize"])  # without fuse the GEMM adds the bias
def test_linears_past_the_gemv_run_the_gemm(bias: bool, pipeline: str) -> None:
    torch.manual_seed(0)
    model = _Linears(bias).eval()
    for rows in (9, 13, 64, 67):
        x = torch.randn(rows, 97)
        compiled = lamina.compile(model, (x,), poison=True, kernel_language="c", pipeline=pipeline)
        with torch.no_grad():
            assert rel_error(compiled(x), model(x)) <= TOL, (rows, bias, pipeline)
        source = _source(compiled, x)
        assert "torch.mm(" not in source.split("else:")[0] and GEMM_CALL.search(source)


def test_rows_decided_per_call_and_weights_changed_in_place() -> None:
    from torch.export import Dim

    torch.manual_seed(1)
    model = _Linears(True).eval()
    x = torch.randn(3, 4, 97)
    compiled = lamina.compile(model, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},), kernel_language="c")
    with torch.no_grad():
        for batch in (1, 2, 17):
            x = torch.randn(batch, 4, 97)
            assert rel_error(compiled(x), model(x)) <= TOL, batch
        model.a.weight.mul_(-0.5)
        model.b.bias.add_(1.0)
        assert rel_error(compiled(x), model(x)) <= TOL


def test_a_matmul_by_a_weight_stored_in_out_runs_the_gemm() -> None:
    """transformers' GPT-2 (Conv1D: x @ W with W [in, out]) through the GEMM, decode-sized and prompt-sized."""
    from lamina.models.hf import tiny_hf_model

    model = tiny_hf_model("gpt2", layers=2, width=64).eval()
    for tokens in (1, 40):
        ids = torch.randint(0, 100, (1, tokens), generator=torch.Generator().manual_seed(tokens))
        compiled = lamina.compile(model, (ids,), poison=True)
        with torch.no_grad():
            got, want = compiled(ids).logits, model(ids).logits
        assert rel_error(got, want) <= TOL
        assert "torch.matmul(" not in _source(compiled, ids)


def test_a_frozen_module_carries_the_gemm(tmp_path) -> None:
    torch.manual_seed(2)
    model = _Linears(False).eval()
    x = torch.randn(20, 97)
    compiled = lamina.compile(model, (x,), kernel_language="c")
    path = tmp_path / "linears.lamina"
    lamina.save(compiled, path, frozen=True)
    loaded = lamina.load(path)
    assert any(f.name == "lamina_gemm_f32" for f in loaded._frozen_plan.functions)
    with torch.no_grad():
        assert rel_error(loaded(x), model(x)) <= TOL


@pytest.mark.parametrize("options", ["bits=8", "bits=4,group=32", "bits=8,group=32,scheme=asym"])
def test_quantized_prefill_multiplies_its_dequantized_blocks_on_the_gemm(options: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the quantized kernels' rows each block of dequantized output channels is packed and
    multiplied on the GEMM, written into its columns of the output: blocks of 32 channels here, so 70
    channels are three blocks, the last a partial tile."""
    from lamina.runtime import qlinear_cpu
    from tests.quant.test_qlinear_cpu import Layer, _check

    monkeypatch.setattr(qlinear_cpu, "DEQUANT_BLOCK_BYTES", 32 * 256 * 4)
    torch.manual_seed(3)
    compiled = _check(Layer(256, 70), torch.randn(40, 256), f"quantize{{{options},keep=none}},fuse",
                      kernel_language="c")
    assert "lamina_gemm_f32" in compiled._executor.target.own
