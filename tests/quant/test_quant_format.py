"""The quantized weight format (ir/quant_format.py): packing, scales, zero points, errors."""
from __future__ import annotations

import pytest
import torch

from lamina.ir.quant_format import QuantFormat, QuantFormatError, dequantize, quantize, unpack

FORMATS = [QuantFormat(bits, group, scheme) for bits in (8, 4) for scheme in ("sym", "asym") for group in (0, 32, 64, 128)]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_round_trip_error_is_at_most_half_a_step(fmt: QuantFormat) -> None:
    torch.manual_seed(0)
    w = torch.randn(24, 256) * torch.linspace(0.1, 3.0, 256)  # channels of very different ranges
    stored = quantize(w, fmt)
    assert [t.shape for t in stored] == [torch.Size(t.shape) for t in fmt.types(24, 256)]
    zeros = stored[2] if fmt.scheme == "asym" else None
    back = dequantize(stored[0], stored[1], zeros, fmt)
    g = fmt.group_size(256)
    step = stored[1].repeat_interleave(g, dim=1)  # each element's scale
    assert torch.all((back - w).abs() <= step / 2 * (1 + 1e-5) + 1e-7)


def test_int4_packing_puts_element_j_and_j_plus_16_in_one_byte() -> None:
    fmt = QuantFormat(4, 32, "asym")
    w = torch.arange(64, dtype=torch.float32).reshape(1, 64) % 16  # 0..15 twice: stored as themselves
    w[0, 0] = 0.0
    q, scale, zero = quantize(w * 1.0, fmt)
    assert torch.all(zero == 0) and torch.allclose(scale, torch.ones_like(scale))
    assert q.shape == (1, 32)
    for j in range(16):
        assert int(q[0, j]) & 15 == j % 16 and int(q[0, j]) >> 4 == (j + 16) % 16
    assert torch.equal(unpack(q, fmt)[0], (torch.arange(64) % 16).to(torch.int32))


def test_an_all_zero_group_dequantizes_to_zeros() -> None:
    for fmt in FORMATS:
        w = torch.zeros(2, 128)
        w[1] = torch.randn(128)
        stored = quantize(w, fmt)
        back = dequantize(stored[0], stored[1], stored[2] if fmt.scheme == "asym" else None, fmt)
        assert torch.equal(back[0], torch.zeros(128))


@pytest.mark.parametrize("kwargs, words", [
    ({"bits": 3, "group": 0}, "bits=3"),
    ({"bits": 8, "group": 0, "scheme": "nf4"}, "scheme='nf4'"),
    ({"bits": 4, "group": 48}, "multiples of 32"),
    ({"bits": 8, "group": -2}, "group=-2"),
])
def test_bad_formats_name_the_option(kwargs: dict, words: str) -> None:
    with pytest.raises(QuantFormatError, match=words):
        QuantFormat(**kwargs)


def test_a_group_that_does_not_divide_the_input_is_an_error() -> None:
    with pytest.raises(QuantFormatError, match="group=64 does not divide the input size 96"):
        quantize(torch.randn(4, 96), QuantFormat(8, 64))
    with pytest.raises(QuantFormatError, match="multiple of 32"):
        quantize(torch.randn(4, 40), QuantFormat(4, 0))
    assert quantize(torch.randn(4, 40), QuantFormat(8, 0))[1].shape == (4, 1)  # per channel: any K
