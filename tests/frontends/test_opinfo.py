"""PyTorch's own OpInfo samples (common_methods_invocations.op_db) for every op lamina claims, as Inductor's
op tests use them: each float32 sample through lamina.compile (cpu, poisoned buffers) must match eager, or
be refused with a lamina error naming the op (a sample using an argument lamina does not support)."""
from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from torch import nn

pytest.importorskip("expecttest")

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

import lamina  # noqa: E402
from lamina.fuzz import _rel  # noqa: E402
from lamina.ir.errors import LaminaError  # noqa: E402

pytestmark = pytest.mark.slow  # a sweep: left out of `-m "not slow"`

# OpInfo name (variant) -> what lamina translates it to; every one of these must compile at least one sample
CLAIMED = [
    "abs", "neg", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "sin", "cos", "erf", "reciprocal", "floor",
    "ceil", "trunc", "sign", "log1p", "nn.functional.relu", "nn.functional.silu", "nn.functional.gelu",
    "nn.functional.hardswish",
    "add", "sub", "mul", "div.no_rounding_mode", "div.floor_rounding", "div.trunc_rounding", "true_divide",
    "floor_divide", "remainder", "fmod", "pow", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_xor", "logical_not", "where", "clamp", "masked_fill",
    "sum", "mean", "amax", "amin", "var", "std", "argmax", "cumsum", "softmax", "log_softmax",
    "linalg.vector_norm", "nn.functional.layer_norm", "nn.functional.rms_norm", "nn.functional.embedding",
    "nn.functional.linear", "matmul", "mm", "bmm", "nn.functional.scaled_dot_product_attention",
    "nn.functional.conv1d", "nn.functional.conv2d", "nn.functional.max_pool2d", "nn.functional.avg_pool2d",
    "nn.functional.pad.constant", "reshape", "view", "permute", "transpose", "expand", "squeeze", "unsqueeze",
    "flatten", "cat", "stack", "split", "chunk", "narrow", "repeat", "repeat_interleave", "tril", "triu",
    "gather", "index_select", "topk", "sort", "histc", "index_put", "slice_scatter", "t", "roll", "diff",
    "nn.functional.adaptive_avg_pool1d", "nn.functional.adaptive_avg_pool2d", "nn.functional.pad.reflect", "nn.functional.pad.replicate",
]
SAMPLES_PER_OP = 8
_BY_NAME = {(o.name + (f".{o.variant_test_name}" if o.variant_test_name else "")): o for o in op_db}


class Call(nn.Module):
    """``fn(*args, **kwargs)`` with the sample's tensors as inputs (not constants)."""

    def __init__(self, fn, structure, constants) -> None:
        super().__init__()
        self.fn, self.structure, self.constants = fn, structure, constants

    def forward(self, *tensors: torch.Tensor):
        leaves = iter(tensors)
        flat = [next(leaves) if c is _TENSOR else c for c in self.constants]
        args, kwargs = pytree.tree_unflatten(flat, self.structure)
        return self.fn(*args, **kwargs)


_TENSOR = object()


def _module(opinfo, sample) -> tuple[Call, tuple[torch.Tensor, ...]]:
    flat, structure = pytree.tree_flatten(((sample.input, *sample.args), dict(sample.kwargs)))
    tensors = tuple(x for x in flat if isinstance(x, torch.Tensor))
    constants = [_TENSOR if isinstance(x, torch.Tensor) else x for x in flat]
    return Call(opinfo.op, structure, constants), tensors


def _outputs(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", CLAIMED)
def test_opinfo_samples_match_eager(name: str) -> None:
    opinfo = _BY_NAME[name]
    samples = [s for s in opinfo.sample_inputs("cpu", torch.float32, requires_grad=False)][:SAMPLES_PER_OP]
    compiled_any, refusals = False, []
    for sample in samples:
        model, tensors = _module(opinfo, sample)
        with torch.no_grad():
            try:
                want = model(*tensors)
            except Exception:  # noqa: BLE001 - a sample eager rejects is no test of lamina
                continue
            try:
                compiled = lamina.compile(model, tensors, fallback=False, poison=True)
                got = compiled(*tensors)
            except LaminaError as e:
                refusals.append(f"{sample}: {type(e).__name__}: {str(e)[:200]}")
                continue
        compiled_any = True
        for g, w in zip(_outputs(got), _outputs(want), strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, (name, sample)
            tol = 1e-4 if w.is_floating_point() else 0.0
            assert _rel(g, w) <= tol, (name, sample, _rel(g, w))
    assert compiled_any, f"{name}: no sample compiled:\n" + "\n".join(refusals)
