"""fuse: the regions it forms, and that fused graphs compute what the originals do."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import pytest

import lamina
from lamina.frontends.fx import import_module
from lamina.ir import interpret, parse, verify
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp
from lamina.models.hf import make_hf_gpt2, make_hf_llama
from lamina.ir.ops import category
from lamina.passes.fusion import fuse


@pytest.mark.parametrize("factory", [make_mlp, make_gpt2_stack, make_llama_block, make_cnn, make_hf_gpt2, make_hf_llama])
def test_fused_graph_computes_the_same(factory) -> None:
    model, args, *kwargs = factory()
    imported = import_module(model, args, kwargs[0] if kwargs else None)
    graph = lamina.run_pipeline(imported.graph, "canonicalize")
    fused = verify(fuse(graph))
    weights = {k: v.numpy() for k, v in imported.weights.items()}
    inputs = [a.numpy() for a in args]
    for a, b in zip(interpret(graph, inputs, weights), interpret(fused, inputs, weights)):
        np.testing.assert_array_equal(a, b)
    loose = [op.name for op in fused.ops if op.name != "fused" and category(op.name).in_kernel]
    assert not loose, f"kernel ops left outside every region: {loose}"


def test_gpt2_block_becomes_three_kernels_around_the_library_calls() -> None:
    model, args = make_gpt2_stack(n_layers=4)
    fused = lamina.run_pipeline(lamina.trace(model, args), "canonicalize,fuse")
    kernels = [op for op in fused.ops if op.name == "fused"]
    per_layer = Counter(op.loc.module.split(".")[1] for op in kernels if op.loc.module.startswith("h."))
    assert set(per_layer.values()) == {3}
    # c_attn feeds only views and attention: its bias stays in the GEMM (addmm), no kernel of its own
    c_attn = [op for op in fused.ops if op.name == "linear" and op.loc.module.endswith("attn.c_attn")]
    assert len(c_attn) == 4 and all(len(op.operands) == 3 for op in c_attn)
    # bias + residual add + the next layer_norm share one kernel
    names = [[o.name for o in k.regions[0].ops] for k in kernels]
    assert ["add", "add", "layer_norm", "yield"] in names
    assert ["add", "gelu", "yield"] in names


def test_no_cycle_through_a_library_call() -> None:
    text = """graph @g(%x: f32[4,4], %w: f32[4,4]) {
  %0 = exp(%x) : f32[4,4]
  %1 = matmul(%0, %w) : f32[4,4]
  %2 = mul(%0, %1) : f32[4,4]
  return %2
}
"""
    fused = fuse(parse(text))
    assert [op.name for op in fused.ops] == ["fused", "matmul", "fused"]
    x, w = np.random.rand(4, 4).astype(np.float32), np.random.rand(4, 4).astype(np.float32)
    np.testing.assert_allclose(interpret(fused, [x, w])[0], np.exp(x) * (np.exp(x) @ w), rtol=1e-6)


def test_siblings_reading_one_input_share_a_kernel_without_a_cycle() -> None:
    text = """graph @g(%x: f32[4,4], %w: f32[4,4]) {
  %0 = exp(%x) : f32[4,4]
  %1 = matmul(%0, %w) : f32[4,4]
  %2 = tanh(%x) : f32[4,4]
  %3 = add(%2, %1) : f32[4,4]
  %4 = neg(%x) : f32[4,4]
  return %3, %4
}
"""
    fused = verify(fuse(parse(text)))
    # tanh and neg read only %x: they join exp's kernel; add needs the matmul, so it cannot
    assert [op.name for op in fused.ops] == ["fused", "matmul", "fused"]
    assert Counter(op.name for op in fused.ops[0].regions[0].ops) == Counter({"exp": 1, "tanh": 1, "neg": 1, "yield": 1})
    x, w = np.random.rand(4, 4).astype(np.float32), np.random.rand(4, 4).astype(np.float32)
    got = interpret(fused, [x, w])
    np.testing.assert_allclose(got[0], np.tanh(x) + np.exp(x) @ w, rtol=1e-6)
    np.testing.assert_allclose(got[1], -x, rtol=1e-6)


class ReadsOtherRows(torch.nn.Module):
    """Reductions read at another row than their own: through a reshape that moves the reduced axis,
    by broadcasting a dropped-axis result along the row, and through a gather. Found by the fuzzer."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        transposed = x + x.sum(1, keepdim=True).reshape(1, -1)
        broadcast = x - x.mean(1)
        gathered = torch.gather(x.softmax(0), 0, torch.tensor([[1, 0, 2, 4, 3]] * 5)) * 2
        kept = x * x.amax(1, keepdim=True)  # read at its own row: stays in one kernel
        return transposed, broadcast, gathered, kept


def test_a_reduction_is_never_read_at_another_rows_position_in_its_kernel() -> None:
    x = torch.randn(5, 5)  # square, so every one of those reads is shape-correct
    compiled = lamina.compile(ReadsOtherRows(), (x,), poison=True)
    for got, want in zip(compiled(x), ReadsOtherRows()(x), strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    kept = [op for op in compiled.graph.ops if op.name == "fused"
            and {o.name for o in op.regions[0].ops} >= {"amax", "mul"}]
    assert kept, "a reduction read at its own row still fuses with its consumer"


def _kernels(graph) -> list[list[str]]:
    return [[o.name for o in op.regions[0].ops if o.name != "yield"] for op in graph.ops if op.name == "fused"]


def test_a_kernel_read_only_by_a_later_kernel_is_merged_into_it() -> None:
    """silu(gate) * up with up a GEMM after the silu (the MLP of Llama), and the rotary pattern
    cat(-q[..., 2:], q[..., :2]) * sin + q * cos: each producer has one reading kernel, which computes it."""
    text = """graph @g(%x: f32[4,4], %w: f32[4,4], %s: f32[4,4]) {
  %0 = exp(%x) : f32[4,4]
  %1 = matmul(%x, %w) : f32[4,4]
  %2 = mul(%0, %1) : f32[4,4]
  %3 = matmul(%2, %w) : f32[4,4]
  %4 = mul(%3, %s) : f32[4,4]
  %5 = slice(%3) {dim=1, start=2, end=4, step=1} : f32[4,2]
  %6 = neg(%5) : f32[4,2]
  %7 = slice(%3) {dim=1, start=0, end=2, step=1} : f32[4,2]
  %8 = concat(%6, %7) {dim=1} : f32[4,4]
  %9 = mul(%8, %s) : f32[4,4]
  %10 = add(%4, %9) : f32[4,4]
  return %10
}
"""
    graph = parse(text)
    fused = verify(fuse(graph))
    assert [op.name for op in fused.ops] == ["matmul", "fused", "matmul", "fused"]
    assert Counter(_kernels(fused)[1]) == Counter({"mul": 2, "neg": 1, "concat": 1, "add": 1, "slice": 2})
    x, w, s = (np.random.rand(4, 4).astype(np.float32) for _ in range(3))
    np.testing.assert_array_equal(interpret(fused, [x, w, s])[0], interpret(graph, [x, w, s])[0])
    from lamina.runtime.cpu import CpuExecutor

    got = CpuExecutor(fused, poison=True)([torch.from_numpy(a) for a in (x, w, s)], {})[0]
    # float32; torch's GEMM sums in another order than NumPy's (1.6e-6 on an AMD EPYC)
    np.testing.assert_allclose(got.numpy(), interpret(graph, [x, w, s])[0], rtol=1e-5, atol=1e-6)


def test_no_merge_where_the_producer_would_be_recomputed_or_is_read_twice() -> None:
    text = """graph @g(%x: f32[4,1], %y: f32[4,4], %w: f32[4,4]) {
  %0 = exp(%x) : f32[4,1]
  %1 = matmul(%y, %w) : f32[4,4]
  %2 = add(%1, %0) : f32[4,4]
  %3 = tanh(%y) : f32[4,4]
  %4 = matmul(%y, %y) : f32[4,4]
  %5 = mul(%3, %4) : f32[4,4]
  %6 = matmul(%5, %w) : f32[4,4]
  %7 = sub(%3, %6) : f32[4,4]
  return %2, %7
}
"""
    fused = verify(fuse(parse(text)))
    kernels = _kernels(fused)
    assert ["exp"] in kernels  # broadcast along the row by its reader: computed once, not four times
    assert any(k[:1] == ["tanh"] and "mul" not in k for k in kernels)  # read by two kernels: stays
