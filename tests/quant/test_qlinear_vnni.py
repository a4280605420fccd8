"""act=int8 on the cpu backend: the AVX-512 VNNI kernels (Numba's: codegen/vnni_dot.py, qlinear_vnni_cpu.py; C's:
codegen/vnni_c.py) against the interpreter's exact integer products, for every format, and the float fallback
where they cannot run."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import lamina
from lamina.codegen.cache import KernelCache
from lamina.codegen.cpu_c import PRELUDE
from lamina.codegen.vnni_c import ARGUMENTS, VnniC
from lamina.codegen.vnni_dot import VnniDot, host_has_vnni
from lamina.ir.quant_format import QuantFormat, int8_product, quantize, quantize_rows, unpack
from lamina.runtime.native_kernels import NativeFunction, compiled_function, compiler
from lamina.runtime.qlinear_cpu import QLinearCpu

from .test_qlinear_cpu import Layer, _check

needs_vnni = pytest.mark.skipif(not host_has_vnni(), reason="this CPU has no AVX-512 VNNI")
LANGUAGES = ["numba", pytest.param("c", marks=pytest.mark.skipif(compiler() is None, reason="no C compiler"))]


def _dispatcher(fmt: QuantFormat, k: int, n: int, language: str) -> QLinearCpu:
    """``act=int8``'s dispatcher with the integer kernel of ``language``."""
    native = None
    if language == "c":
        kernel = VnniC(fmt, k)
        native = compiled_function(NativeFunction(kernel.name, ARGUMENTS, kernel.source()), PRELUDE)
    q = QLinearCpu(fmt, k, n, KernelCache(), act="int8", native_vnni=native)
    assert ("VNNI, C" in q.describe()) == (language == "c")
    return q

FORMATS = [QuantFormat(b, g, s) for b in (8, 4) for s in ("sym", "asym") for g in (0, 32, 64, 128, 256)]


def _options(fmt: QuantFormat) -> str:
    return f"bits={fmt.bits},group={fmt.group},scheme={fmt.scheme}"


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label.replace(" ", "_"))
def test_every_variant_is_valid_llvm_ir(fmt: QuantFormat) -> None:
    import llvmlite.binding as llvm

    dot = VnniDot(fmt, 512)
    assert dot.unsupported() is None
    module = llvm.parse_assembly(dot.source())
    module.verify()
    assert module.get_function(dot.name) is not None


@needs_vnni
@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("rows", [1, 3, 16], ids=lambda r: f"rows{r}")
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label.replace(" ", "_"))
def test_vnni_kernels_match_the_interpreter(fmt: QuantFormat, rows: int, language: str) -> None:
    torch.manual_seed(rows)
    compiled = _check(Layer(256, 37), torch.randn(rows, 256), f"quantize{{{_options(fmt)},act=int8,keep=none}},fuse",
                      kernel_language=language)
    kernel = compiled.quantization[0].kernel
    assert "VNNI" in kernel and ("VNNI, C" in kernel) == (language == "c")


@needs_vnni
@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("fmt", [QuantFormat(8, 0), QuantFormat(4, 0), QuantFormat(8, 0, "asym")],
                         ids=lambda f: f.label.replace(" ", "_"))
def test_per_channel_integer_sums_are_exact(fmt: QuantFormat, language: str) -> None:
    """One scale per row: the int32 lanes hold the exact sum, so the result is the reference's to the last bit
    or one unit in the last place (the reference rounds a float64 sum, the kernel a float64 product)."""
    torch.manual_seed(8)
    k, n = 512, 64
    w, x = torch.randn(n, k), torch.randn(4, k) * 3
    stored = quantize(w, fmt)
    zeros = stored[2] if len(stored) == 3 else None
    q = _dispatcher(fmt, k, n, language)
    out = torch.full((4, n), float("nan"))
    q(x, stored[0], stored[1], zeros, out)
    want = int8_product(x, stored[0], stored[1], zeros, fmt)
    np.testing.assert_array_max_ulp(out.numpy(), want.numpy(), maxulp=1)


@needs_vnni
@pytest.mark.parametrize("language", LANGUAGES)
def test_extreme_inputs(language: str) -> None:
    """All-zero rows (scale 0), ties at .5 after scaling, the most negative int8 weight, huge magnitudes."""
    torch.manual_seed(9)
    k, n = 256, 16
    fmt = QuantFormat(8, 0)
    w = torch.randn(n, k)
    w[0, :] = -1.0  # every value -127 after quantizing; w[1] has a -128 once scaled by its positive max
    w[1, 0], w[1, 1] = -1.0, 127 / 128
    x = torch.zeros(4, k)
    x[1] = torch.arange(k) % 5 - 2.0  # max 2: values 2 * 63.5 / 127 land on .5 ties
    x[2] = torch.randn(k) * 1e30
    x[3] = torch.randn(k) * 1e-30
    stored = quantize(w, fmt)
    out = torch.full((4, n), float("nan"))
    _dispatcher(fmt, k, n, language)(x, *stored, None, out)
    want = int8_product(x, *stored, None, fmt)
    assert (out[0] == 0).all()
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-6, atol=0)


def test_the_float_fallback_computes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where VNNI is absent (or a format does not fit its chunks) the float kernel runs on the quantized rows."""
    torch.manual_seed(10)
    k, n = 256, 40
    for fmt in (QuantFormat(4, 32), QuantFormat(8, 64, "asym")):
        stored = quantize(torch.randn(n, k), fmt)
        zeros = stored[2] if len(stored) == 3 else None
        x = torch.randn(2, k)
        out = torch.full((2, n), float("nan"))
        q = QLinearCpu(fmt, k, n, KernelCache(), act="int8", integer_kernels=False)
        q(x, stored[0], stored[1], zeros, out)
        assert "integer kernels off" in q.describe() or "VNNI" in q.describe()
        want = int8_product(x, stored[0], stored[1], zeros, fmt)
        np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_sizes_the_chunks_do_not_fit_fall_back_and_say_why() -> None:
    torch.manual_seed(11)
    compiled = _check(Layer(96, 8), torch.randn(1, 96), "quantize{bits=4,group=32,act=int8,keep=none},fuse")
    assert "K=96 is not a multiple of 128" in compiled.quantization[0].kernel or not host_has_vnni()
    assert VnniDot(QuantFormat(8, 96), 192).unsupported() == "group 96 neither divides nor is a multiple of a " \
                                                              "64-value chunk"


def test_int8_product_is_the_exact_sum_over_groups() -> None:
    torch.manual_seed(12)
    fmt = QuantFormat(4, 32, "asym")
    w, x = torch.randn(8, 64), torch.randn(3, 64)
    qw, s, z = quantize(w, fmt)
    xq, sx = quantize_rows(x)
    v = unpack(qw, fmt).double().reshape(8, 2, 32)
    deq = ((v - z.double()[..., None]) * s.double()[..., None]).reshape(8, 64)
    want = (xq.double() @ deq.t() * sx.double()).float()
    torch.testing.assert_close(int8_product(x, qw, s, z, fmt), want, rtol=0, atol=0)


def test_concurrent_callers_get_their_own_results() -> None:
    torch.manual_seed(14)
    model = Layer(256, 64)
    compiled = lamina.compile(model, (torch.randn(1, 256),), pipeline="quantize{bits=4,act=int8,keep=none},fuse")
    inputs = [torch.randn(1, 256) for _ in range(8)]
    with torch.no_grad():
        want = [compiled(x).clone() for x in inputs]
    got: list[torch.Tensor | None] = [None] * len(inputs)

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(20):
                got[i] = compiled(inputs[i]).clone()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@needs_vnni
def test_scratch_rows_outlive_the_threads_that_read_them(tmp_path) -> None:
    """Numba frees a local array after its last use, and taking its raw address is not a use: the
    quantized rows (xb) and their corrections (init) must be freed only after the parallel loop that reads
    them through pointers (freed before it, another thread's allocation could overwrite them: garbage).
    Checked in the kernel's LLVM: every scratch array sized by the row count M is released after the loop."""
    import re

    q = QLinearCpu(QuantFormat(8, 0), 128, 16, KernelCache(tmp_path), act="int8")  # a fresh compile: LLVM to read
    kernel = q.kernel("vnni")
    x = np.random.default_rng(0).standard_normal((2, 128), dtype=np.float32)
    out = np.full((2, 16), np.nan, np.float32)
    kernel(x, np.ones((16, 128), np.int8), np.ones((16, 1), np.float32), np.zeros((16, 1), np.float32), out, 2, 16)
    assert np.isfinite(out).all()
    llvm = kernel.inspect_llvm(kernel.signatures[0])
    entry = re.search(r"define [^\n]*@_ZN[^\n]*" + q.dot.name + r".*?\n}\n", llvm, re.S)
    assert entry is not None
    body = entry.group(0)
    sized = re.findall(r"(%[\w.]+) = tail call ptr @NRT_MemInfo_alloc_aligned\(i64 %", body)  # sized at run time
    assert len(sized) >= 3  # xb, init, xsum and sxs (LLVM may merge the last two)
    threads = body.index("@numba_parallel_for")
    for name in sized:
        assert body.index(f"@NRT_decref(ptr nonnull {name})") > threads, f"{name} is freed before the threads run"
