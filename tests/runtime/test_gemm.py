"""The C GEMM of the cpu backend (``codegen/gemm_c.py``): float32 linears past the GEMV's rows, and
matmuls by a weight stored [in, out] (GPT-2's Conv1D), on a weight packed once per plan. The backend
picks it for every shape on AMD CPUs with AVX-512 and for narrow or short ones on Intel's
(``runtime/gemm_choice.py``); these tests force it on wherever the CPU has AVX-512. Tolerance: float32, 1e-5 relative to the output's scale (another summation order
than MKL's)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.gemm_c import pack_weight
from lamina.ir.interpreter import interpret
from tests.conftest import rel_error
from tests.runtime.conftest import C_GEMM

pytestmark = C_GEMM
TOL = 1e-5
GEMM_CALL = re.compile(r"\bG\d+\(")



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


@pytest.fixture(scope="module")
def gemm_kernel():
    """The GEMM as a ctypes function of its own library."""
    from lamina.codegen.cpu_c import PRELUDE
    from lamina.codegen.gemm_c import ARGUMENTS, NAME, gemm_source
    from lamina.runtime.native_kernels import NativeFunction, compiled_function

    return compiled_function(NativeFunction(NAME, ARGUMENTS, gemm_source()), PRELUDE)


@pytest.mark.parametrize("m, k, n", [
    (13, 97, 1453),    # x in cache: each thread takes whole tiles
    (700, 97, 1453),   # x past GROUP_BYTES: groups of 21 tiles (21, 21, 4), 116 blocks of 6 and one of 4
    (40, 2100, 70),    # a tile past GROUP_BYTES alone: groups of one tile, the last partial
])
def test_the_gemm_covers_every_block_of_every_tile_group(gemm_kernel, m: int, k: int, n: int) -> None:
    """Both loop orders of the kernel, on an output block inside a wider poisoned output (row stride
    ldc > N): every element of the block is written once and nothing beside it."""
    from lamina.codegen.gemm_c import GROUP_BYTES
    from lamina.runtime.native_kernels import Flat

    assert (m * k * 4 > GROUP_BYTES) == (m > 13)
    torch.manual_seed(m)
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    out = torch.full((m, n + 5), float("nan"))
    gemm_kernel(Flat(x), Flat(pack_weight(w)), Flat(b), Flat(out), m, n, k, n + 5)
    want = (x.double() @ w.double().t() + b.double()).float()
    assert rel_error(out[:, :n], want) <= TOL
    assert bool(out[:, n:].isnan().all())


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


QUANT_FORMATS = [f"bits={b},group={g},scheme={s}" for b in (8, 4) for s in ("sym", "asym") for g in (0, 32, 128)]
QUANT_FORMATS += ["bits=4,group=32,act=int8", "bits=8,group=32,scheme=asym,act=int8"]  # the rows quantized first


@pytest.mark.parametrize("options", QUANT_FORMATS)
def test_quantized_prefill_dequantizes_tiles_into_the_gemm(options: str) -> None:
    """Past the quantized kernels' rows, the quantized GEMM (``codegen/qgemm_c.py``) dequantizes each
    tile of 32 output channels into the GEMM's layout and multiplies every row by it: 70 channels are
    three tiles, the last partial; 40 rows are six blocks of 6 and one of 4; every format, group and
    scheme; outputs poisoned before the call."""
    from tests.quant.test_qlinear_cpu import Layer, _check

    torch.manual_seed(3)
    compiled = _check(Layer(256, 70), torch.randn(40, 256), f"quantize{{{options},keep=none}},fuse",
                      kernel_language="c")
    assert "lamina_qgemm_f32" in compiled._executor.target.own
    assert all("C GEMM dequantizing 32-channel tiles" in layer.kernel for layer in compiled.quantization)


def test_quantized_prefill_quantizes_rows_with_nan_and_zeros_as_the_reference_does() -> None:
    """``act=int8`` past the integer kernels' rows: the GEMM quantizes each row itself; an all-zero row
    (scale 0) gives zeros, a row with a NaN or an infinity gives NaN, as the interpreter's."""
    from tests.quant.test_qlinear_cpu import Layer

    torch.manual_seed(4)
    x = torch.randn(20, 256)
    x[3] = 0.0
    x[5, 17] = float("nan")
    x[7, 200] = float("inf")
    model = Layer(256, 70)
    compiled = lamina.compile(model, (x,), pipeline="quantize{bits=4,group=32,act=int8,keep=none},fuse", poison=True,
                              kernel_language="c")
    (want,) = interpret(compiled.graph, [x.numpy()], {k: v.detach().numpy() for k, v in model.state_dict().items()})
    want = torch.from_numpy(want)
    with torch.no_grad():
        got = compiled(x)
    assert torch.equal(got.isnan(), want.isnan()) and bool(got[5].isnan().all()) and bool(got[7].isnan().all())
    keep = ~want.isnan()
    assert rel_error(got[keep], want[keep]) <= TOL
