"""Shared test helpers: the error measure every numerical test states its tolerance in."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lamina.runtime.native_kernels import compiler

# the cpu backend's kernel languages: Numba (the default) and C (what saved modules carry)
KERNEL_LANGUAGES = ["numba", pytest.param("c", marks=pytest.mark.skipif(compiler() is None, reason="no C compiler"))]


def rel_error(actual: object, expected: object) -> float:
    """max |actual - expected| / max |expected|: relative to the output's scale, so near-zero entries don't blow up."""
    a = np.asarray(actual.detach() if isinstance(actual, torch.Tensor) else actual, dtype=np.float64)
    e = np.asarray(expected.detach() if isinstance(expected, torch.Tensor) else expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    assert np.isfinite(a).all() == np.isfinite(e).all(), "non-finite values differ"
    scale = np.abs(e).max()
    return float(np.abs(a - e).max() / scale) if scale > 0 else float(np.abs(a - e).max())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)
    np.random.seed(1234)
