"""The quantized prefill GEMM on AMX tiles (``codegen/qgemm_amx.py``): every format against the float64
reference, the exactness of x's three bfloat16 terms, the float32 kernel where AMX cannot take a call, and
the backend choosing it on a CPU with AMX. Skipped where this CPU has no AMX."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lamina.codegen import qgemm_amx, qgemm_c
from lamina.codegen.cpu_c import PRELUDE
from lamina.ir.quant_format import QuantFormat, dequantize, int8_product, quantize
from lamina.runtime.gemm_choice import AMX_FEATURES, GemmChoice
from lamina.runtime.native_kernels import NativeFunction, NativeLibrary, build_library, compiler, cpu_features

pytestmark = pytest.mark.skipif(compiler() is None or not all(f in cpu_features() for f in AMX_FEATURES),
                                reason="the AMX GEMM needs a C compiler and a CPU with AMX-BF16")

FORMATS = [QuantFormat(b, g, s) for b in (8, 4) for s in ("sym", "asym") for g in (0, 32, 128)]


@pytest.fixture(scope="module")
def library() -> NativeLibrary:
    functions = [NativeFunction(qgemm_c.NAME, qgemm_c.ARGUMENTS, qgemm_c.qgemm_source()),
                 NativeFunction(qgemm_amx.NAME, qgemm_amx.ARGUMENTS, qgemm_amx.qgemm_amx_source())]
    return NativeLibrary.load(build_library(functions, PRELUDE), functions)


def _run(library: NativeLibrary, name: str, x: torch.Tensor, packed: tuple[torch.Tensor, ...], fmt: QuantFormat,
         act_int8: bool) -> torch.Tensor:
    """``name``'s output for x and the packed weight, poisoned with NaN before the call."""
    q, s = packed[0], packed[1]
    z = packed[2] if len(packed) > 2 else None
    (m, k), n = x.shape, s.shape[0]
    out = torch.full((m, n), float("nan"))
    library[name](x.data_ptr(), q.data_ptr(), s.data_ptr(), z.data_ptr() if z is not None else None, out.data_ptr(),
                  m, n, k, fmt.group_size(k), n, qgemm_c.storage(fmt), float(fmt.offset), int(act_int8))
    return out


def _want(x: torch.Tensor, packed: tuple[torch.Tensor, ...], fmt: QuantFormat, act_int8: bool) -> torch.Tensor:
    z = packed[2] if len(packed) > 2 else None
    if act_int8:
        return int8_product(x, packed[0], packed[1], z, fmt)
    return (x.double() @ dequantize(packed[0], packed[1], z, fmt, torch.float64).t()).float()


@pytest.mark.parametrize("act_int8", [False, True], ids=["float-rows", "act-int8"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label.replace(" ", "-"))
def test_every_format_matches_the_reference(library: Any, fmt: QuantFormat, act_int8: bool) -> None:
    """40 rows (two 16-row blocks and a partial one) by 70 channels (a 64-channel strip and a partial one),
    K = 256: within float32 rounding of the float64 product, every element written."""
    torch.manual_seed(0)
    packed = quantize(torch.randn(70, 256) * 0.05, fmt)
    x = torch.randn(40, 256)
    got = _run(library, qgemm_amx.NAME, x, packed, fmt, act_int8)
    want = _want(x, packed, fmt, act_int8)
    assert not got.isnan().any()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_three_bfloat16_terms_sum_back_to_x_exactly(library: Any) -> None:
    """Unit weights (per channel, int8): each output is the sum of 32 values of x with full 24-bit mantissas,
    so two bfloat16 terms (16 bits of x) would be off by about 1e-5 relative; three are float32 rounding."""
    torch.manual_seed(1)
    fmt = QuantFormat(8, 0, "sym")
    packed = (torch.ones(16, 32, dtype=torch.int8), torch.ones(16, 1))
    x = 1.0 + torch.rand(17, 32)  # positive: no cancellation, the sum's relative error is the terms'
    got = _run(library, qgemm_amx.NAME, x, packed, fmt, False)
    want = x.double().sum(1, keepdim=True).expand(17, 16)
    assert ((got.double() - want).abs() / want).max().item() < 32 * 2.0 ** -24


@pytest.mark.parametrize("poison", [float("inf"), float("nan")])
def test_rows_with_inf_or_nan_take_the_float_kernel(library: Any, poison: float) -> None:
    """x's terms cannot hold an infinity or NaN: such a call gives the float32 kernel's output, bit for bit."""
    torch.manual_seed(2)
    fmt = QuantFormat(4, 32, "sym")
    packed = quantize(torch.randn(40, 128), fmt)
    x = torch.randn(20, 128)
    x[3, 7] = poison
    got = _run(library, qgemm_amx.NAME, x, packed, fmt, False)
    assert torch.equal(got.nan_to_num(), _run(library, qgemm_c.NAME, x, packed, fmt, False).nan_to_num())
    assert not got[[0, 1, 2, 4]].isnan().any()


def test_groups_the_tiles_do_not_cut_take_the_float_kernel(library: Any) -> None:
    """8-bit groups of 16 split a 32-value tile row: the float32 kernel's output, bit for bit."""
    torch.manual_seed(3)
    fmt = QuantFormat(8, 16, "sym")
    packed = quantize(torch.randn(40, 64), fmt)
    x = torch.randn(20, 64)
    assert torch.equal(_run(library, qgemm_amx.NAME, x, packed, fmt, False),
                       _run(library, qgemm_c.NAME, x, packed, fmt, False))


@pytest.mark.parametrize("options", ["bits=4,group=32", "bits=8,group=0,scheme=asym", "bits=4,group=32,act=int8",
                                     "bits=8,group=0,act=int8"])
def test_the_backend_takes_it_for_a_prefill_where_the_cpu_has_amx(monkeypatch: pytest.MonkeyPatch,
                                                                   options: str) -> None:
    """A prefill's quantized linears run the AMX GEMM (reported by ``compiled.quantization``), matching the
    interpreter on poisoned buffers; 8-bit per-channel ``act=int8`` rows too, instead of ``torch._int_mm``."""
    from tests.quant.test_qlinear_cpu import Layer, _check

    monkeypatch.setattr(GemmChoice, "for_this_cpu", staticmethod(lambda: GemmChoice("shape", amx=True)))
    monkeypatch.setattr(torch, "_int_mm", lambda *args: pytest.fail("torch._int_mm ran instead of the AMX GEMM"))
    torch.manual_seed(4)
    compiled = _check(Layer(256, 70), torch.randn(40, 256), f"quantize{{{options},keep=none}},fuse",
                      kernel_language="c")
    assert qgemm_amx.NAME in compiled._executor.target.own
    assert all("AMX bfloat16 tiles" in layer.kernel and "_int_mm" not in layer.kernel
               for layer in compiled.quantization)
