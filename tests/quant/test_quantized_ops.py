"""The quantize and qlinear ops: types, verifier errors, text form, reference semantics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lamina.ir.builder import GraphBuilder
from lamina.ir.dtypes import DType
from lamina.ir.interpreter import interpret
from lamina.ir.opdef import InferenceError
from lamina.ir.parser import parse
from lamina.ir.quant_format import QuantFormat, dequantize, quantize
from lamina.ir.types import TensorType
from lamina.ir.verifier import verify


def _graph(fmt: QuantFormat, n: int = 12, k: int = 64):
    b = GraphBuilder()
    x = b.input(TensorType((3, k), DType.f32), "x")
    w = b.param("w", TensorType((n, k), DType.f32))
    stored = b.emit_op("quantize", [w], fmt.attrs()).results
    y = b.emit("qlinear", x, *stored, **fmt.attrs())
    return b.build([y])


@pytest.mark.parametrize("fmt", [QuantFormat(8, 0), QuantFormat(8, 32, "asym"), QuantFormat(4, 32),
                                 QuantFormat(4, 64, "asym")], ids=str)
def test_qlinear_is_dequantize_then_linear_exactly(fmt: QuantFormat) -> None:
    g = _graph(fmt)
    verify(g)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 64), np.float32), rng.standard_normal((12, 64), np.float32)
    (got,) = interpret(g, [x], {"w": w})
    stored = quantize(torch.from_numpy(w), fmt)
    want = x @ dequantize(stored[0], stored[1], stored[2] if fmt.scheme == "asym" else None, fmt).numpy().T
    assert np.array_equal(got, want)


def test_text_form_round_trips() -> None:
    g = _graph(QuantFormat(4, 32, "asym"))
    text = str(g)
    assert 'quantize(%w) {bits=4, group=32, scheme="asym", score=none} : u8[12,32], f32[12,2], f32[12,2]' in text
    assert str(parse(text)) == text


def test_verifier_checks_scales_and_packing() -> None:
    text = str(_graph(QuantFormat(4, 32)))
    bad = text.replace("%2 = qlinear(%x, %0, %1)", "%2 = qlinear(%x, %0, %1, %1)")
    with pytest.raises(Exception, match="takes \\(x, qweight, scales\\)"):
        verify(parse(bad))
    b = GraphBuilder()
    x = b.input(TensorType((3, 64), DType.f32), "x")
    q = b.input(TensorType((12, 64), DType.u8), "q")  # 4-bit needs [12, 32]
    s = b.input(TensorType((12, 2), DType.f32), "s")
    with pytest.raises(InferenceError, match="qweight is u8\\[12,64\\], but 4-bit sym group=32 .* needs u8\\[12,32\\]"):
        b.emit("qlinear", x, q, s, bits=4, group=32, scheme="sym")
    s_bad = b.input(TensorType((12, 3), DType.f32), "s3")
    with pytest.raises(InferenceError, match="scales is f32\\[12,3\\]"):
        b.emit("qlinear", x, b.input(TensorType((12, 64), DType.i8), "q8"), s_bad, bits=8, group=32, scheme="sym")
    with pytest.raises(InferenceError, match="bits=3"):
        b.emit("qlinear", x, q, s, bits=3, group=32, scheme="sym")
