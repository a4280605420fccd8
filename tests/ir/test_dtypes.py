"""Element types: their torch counterparts and sizes in memory."""
from __future__ import annotations

import pytest
import torch

from lamina.ir.core import Value
from lamina.ir.dtypes import DType, from_torch, to_torch
from lamina.ir.types import TensorType
from lamina.passes.toolkit import nbytes


@pytest.mark.parametrize("dtype", list(DType), ids=str)
def test_itemsize_is_torchs_element_size(dtype: DType) -> None:
    assert dtype.itemsize == torch.empty((), dtype=to_torch(dtype)).element_size()


def test_bf16_weights_count_two_bytes_each() -> None:
    """NumPy holds bf16 as float32; the bytes a pass reports (skip's saved weights, shard's per-rank
    memory) are the model's: 2 per element."""
    assert nbytes(Value(TensorType((4, 8), DType.bf16))) == 64
    assert from_torch(torch.bfloat16) is DType.bf16
