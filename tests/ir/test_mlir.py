"""MLIR export: modules verify, parse back with the MLIR bindings, and run under IREE like the interpreter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from lamina.frontends.fx import import_module
from lamina.ir import DType, GraphBuilder, TensorType, interpret, parse, symbol
from lamina.ir.mlir import MLIRExportError, to_mlir, to_mlir_text
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp
from lamina.models.hf import make_hf_gpt2
from tests.conftest import rel_error

ir = pytest.importorskip("iree.compiler.ir", reason="MLIR export needs the 'mlir' extra (iree-base-compiler)")
compiler = pytest.importorskip("iree.compiler")
runtime = pytest.importorskip("iree.runtime")

F32_TOL = 1e-5  # IREE's vectorised math (exp, tanh, erf) differs from NumPy's in the last bits


def _run_iree(graph: lamina.Graph, inputs: list[np.ndarray], weights: dict[str, np.ndarray]) -> np.ndarray:
    vmfb = compiler.compile_str(to_mlir_text(graph), target_backends=["llvm-cpu"])
    module = runtime.load_vm_flatbuffer(vmfb, driver="local-sync")
    out = getattr(module, graph.name)(*inputs, *[weights[p.key] for p in graph.params])
    return np.asarray(out.to_host())


@pytest.mark.parametrize("factory", [make_mlp, make_cnn, make_gpt2_stack, make_llama_block, make_hf_gpt2],
                         ids=["mlp", "cnn", "gpt2_stack", "llama_block", "hf_gpt2"])
def test_iree_runs_export_like_the_interpreter(factory) -> None:
    model, args, *kwargs = factory()
    imported = import_module(model, args, kwargs[0] if kwargs else None)
    graph = lamina.run_pipeline(imported.graph, "canonicalize")
    inputs = [a.numpy() for a in args]
    weights = {k: v.numpy() for k, v in imported.weights.items()}
    (expected,) = interpret(graph, inputs, weights)
    assert rel_error(_run_iree(graph, inputs, weights), expected) <= F32_TOL


class _Windows(torch.nn.Module):
    """What canonicalize turns into pads and slices: a depthwise conv, a ceil-mode max pool, and a pad."""

    def __init__(self) -> None:
        super().__init__()
        self.depthwise = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
        self.pool = torch.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.depthwise(x)))
        return torch.nn.functional.pad(y.flatten(2), (2, 1), value=0.5)


def test_iree_runs_the_pads_canonicalize_makes() -> None:
    model, args = _Windows().eval(), (torch.randn(2, 4, 11, 9),)
    imported = import_module(model, args, None)
    graph = lamina.run_pipeline(imported.graph, "canonicalize")
    assert {"pad", "maximum"} <= {op.name for op in graph.ops} and "max_pool2d" not in {op.name for op in graph.ops}
    inputs = [a.numpy() for a in args]
    weights = {k: v.detach().numpy() for k, v in imported.weights.items()}
    (expected,) = interpret(graph, inputs, weights)
    with torch.no_grad():
        assert rel_error(torch.from_numpy(expected), model(*args)) <= F32_TOL
    assert rel_error(_run_iree(graph, inputs, weights), expected) <= F32_TOL


def test_exported_text_parses_with_the_bindings() -> None:
    model, args = make_gpt2_stack(n_layers=2)
    text = to_mlir_text(lamina.trace(model, args))
    with ir.Context():
        module = ir.Module.parse(text)
        assert module.operation.verify()
    assert 'lamina.param = "h.1.attn.c_attn.weight"' in text
    assert "linalg.generic" in text and "func.func @forward" in text


def test_every_elementwise_op_exports_and_runs() -> None:
    text = """graph @f(%x: f32[2,3], %y: f32[3], %m: bool[2,3], %n: i64[2,3]) {
      %0 = add(%x, %y) : f32[2,3]
      %1 = sigmoid(%0) : f32[2,3]
      %2 = gelu(%1) {approximate="none"} : f32[2,3]
      %3 = where(%m, %2, %x) : f32[2,3]
      %4 = cast(%n) {dtype=f32} : f32[2,3]
      %5 = pow(%3, %4) : f32[2,3]
      %6 = clamp(%5) {min=-1.0, max=2.0} : f32[2,3]
      %7 = softmax(%6) {dim=0} : f32[2,3]
      %8 = cumsum(%7) {dim=1} : f32[2,3]
      %9 = argmax(%8) {dim=1, keepdim=true} : i64[2,1]
      %10 = cast(%9) {dtype=f32} : f32[2,1]
      %11 = mul(%8, %10) : f32[2,3]
      %12 = tril(%11) {diagonal=0} : f32[2,3]
      %13 = var(%12) {dims=[1], correction=1, keepdim=false} : f32[2]
      return %12, %13
    }"""
    graph = parse(text)
    rng = np.random.default_rng(0)
    inputs = [rng.random((2, 3), dtype=np.float32), rng.random(3, dtype=np.float32), rng.random((2, 3)) > 0.5,
              rng.integers(0, 3, (2, 3))]
    vmfb = compiler.compile_str(to_mlir_text(graph), target_backends=["llvm-cpu"])
    module = runtime.load_vm_flatbuffer(vmfb, driver="local-sync")
    got = module.f(*inputs)
    for g, e in zip(got, interpret(graph, inputs)):
        assert rel_error(np.asarray(g.to_host()), e) <= F32_TOL


def test_rounding_and_division_ops_export_and_run() -> None:
    text = """graph @f(%x: f32[2,4], %y: f32[2,4], %a: i64[2,4], %b: i64[2,4]) {
      %0 = floor_divide(%x, %y) : f32[2,4]
      %1 = remainder(%x, %y) : f32[2,4]
      %2 = fmod(%x, %y) : f32[2,4]
      %3 = floor_divide(%a, %b) : i64[2,4]
      %4 = remainder(%a, %b) : i64[2,4]
      %5 = fmod(%a, %b) : i64[2,4]
      %6 = ceil(%x) : f32[2,4]
      %7 = trunc(%x) : f32[2,4]
      %8 = sign(%x) : f32[2,4]
      %9 = log1p(%y) : f32[2,4]
      return %0, %1, %2, %3, %4, %5, %6, %7, %8, %9
    }"""
    graph = parse(text)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((2, 4), dtype=np.float32) * 5, rng.random((2, 4), dtype=np.float32) + 0.5,
              rng.integers(-9, 9, (2, 4)), rng.choice([-3, -2, 2, 3], (2, 4))]
    vmfb = compiler.compile_str(to_mlir_text(graph), target_backends=["llvm-cpu"])
    module = runtime.load_vm_flatbuffer(vmfb, driver="local-sync")
    for g, e in zip(module.f(*inputs), interpret(graph, inputs)):
        assert rel_error(np.asarray(g.to_host()), e) <= F32_TOL


def test_symbolic_shapes_are_refused_clearly() -> None:
    b = GraphBuilder()
    x = b.input(TensorType((symbol("B"), 4), DType.f32), "x")
    graph = b.build([b.emit("exp", x)])
    with pytest.raises(MLIRExportError, match="static shapes"):
        to_mlir(graph)


def test_a_negative_pad_is_refused_with_what_to_do() -> None:
    graph = parse("graph @g(%x: f32[4, 6]) {\n"
                  "  %y = pad(%x) {low=[0, -1], high=[0, 2], value=0.0} : f32[4, 7]\n"
                  "  return %y\n}\n")
    with pytest.raises(MLIRExportError, match=r"pad.*negative padding \(a crop\).*slice the tensor instead"):
        to_mlir(graph)


def test_a_newton_expanded_stack_exports_and_runs_under_iree() -> None:
    """stack (the stacked layer weights) and layer_scan (the Newton prefix sum) have MLIR lowerings."""
    model, args = make_gpt2_stack(n_layers=3)
    imported = import_module(model, args)
    graph = lamina.run_pipeline(imported.graph, "canonicalize,newton{iters=2,chunk=3,granularity=sublayer},newton-expand")
    assert {"stack", "layer_scan"} <= {op.name for op in graph.ops}
    inputs = [a.numpy() for a in args]
    weights = {k: v.numpy() for k, v in imported.weights.items()}
    (expected,) = interpret(graph, inputs, weights)
    assert rel_error(_run_iree(graph, inputs, weights), expected) <= F32_TOL
