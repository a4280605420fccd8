"""Every CUDA C kernel generated for the foundation's models compiles with nvcc (no GPU needed)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

import lamina
from lamina.codegen.cuda_c import PRELUDE, cuda_source
from lamina.codegen.lower import lower_kernels, lower_region
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp
from lamina.models.hf import make_hf_gpt2, make_hf_llama
from lamina.passes.fusion import fuse

NVCC = shutil.which("nvcc")


NEWTON = "canonicalize,newton{iters=2,chunk=4,granularity=sublayer},newton-expand,fuse"
NEWTON_TOL = "canonicalize,newton{iters=3,chunk=4,tol=0.001},newton-expand,fuse"


def kernels_of(factory, pipeline: str = "canonicalize,fuse") -> dict:
    model, args, *kwargs = factory()
    graph = lamina.run_pipeline(lamina.trace(model, args, kwargs[0] if kwargs else None), pipeline)
    return {k.name: k for _, k in lower_kernels(graph)}  # an iterate op's body too


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize(("factory", "pipeline"),
                         [(make_mlp, None), (make_gpt2_stack, None), (make_llama_block, None), (make_cnn, None),
                          (make_hf_gpt2, None), (make_hf_llama, None), (make_gpt2_stack, NEWTON), (make_hf_llama, NEWTON),
                          (make_gpt2_stack, NEWTON_TOL)],
                         ids=["mlp", "gpt2_stack", "llama_block", "cnn", "hf_gpt2", "hf_llama", "gpt2_newton",
                              "hf_llama_newton", "gpt2_newton_tol"])
def test_generated_cuda_c_compiles_with_nvcc(factory, pipeline, tmp_path) -> None:
    kernels = kernels_of(factory, *([pipeline] if pipeline else []))
    if pipeline:  # the Newton prefix sum and the batched layer bodies' kernels
        assert any("layer_scan" in name for name in kernels)
    source = PRELUDE + "\n".join(cuda_source(k, prelude=False) for k in kernels.values())
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    done = subprocess.run([NVCC, "-ptx", "-arch=sm_90", str(path), "-o", str(tmp_path / "kernels.ptx")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ptx = (tmp_path / "kernels.ptx").read_text()
    for name in kernels:
        assert f".entry {name}(" in ptx


def test_row_kernels_use_block_reductions_and_pointwise_use_vector_loads() -> None:
    kernels = kernels_of(make_gpt2_stack)
    sources = {name: cuda_source(k) for name, k in kernels.items()}
    layer_norm = next(s for n, s in sources.items() if "layer_norm" in n)
    assert "lm_block_reduce" in layer_norm and "__shfl_down_sync" in layer_norm
    gelu = next(s for n, s in sources.items() if "gelu" in n)
    assert "gridDim.x" in gelu  # grid-stride loop


def test_contiguous_f32_pointwise_kernels_use_float4() -> None:
    from lamina.ir import parse
    from lamina.passes.fusion import fuse

    graph = fuse(parse("""graph @g(%x: f32[64,32], %y: f32[64,32], %b: f32[32]) {
  %0 = mul(%x, %y) : f32[64,32]
  %1 = tanh(%0) : f32[64,32]
  %2 = add(%1, %b) : f32[64,32]
  return %1, %2
}
"""))
    kernel = lower_region(graph.ops[0], ["in0", "in1", "in2"], ["out0", "out1"])
    source = cuda_source(kernel)
    assert "float4" not in source.split('extern "C"')[1]  # %b is broadcast: not every load is flat
    simple = fuse(parse("""graph @g(%x: f32[64,32], %y: f32[64,32]) {
  %0 = mul(%x, %y) : f32[64,32]
  %1 = tanh(%0) : f32[64,32]
  return %1
}
"""))
    body = cuda_source(lower_region(simple.ops[0], ["in0", "in1"], ["out0"])).split('extern "C"')[1]
    assert "reinterpret_cast<const float4*>(in0)[q]" in body and "reinterpret_cast<float4*>(out0)[q]" in body


CHECKED_GRAPH = """graph @g(%w: f32[10,8], %ids: i64[4,3], %x: f32[5,8], %i: i64[5,8], %a: i32[4,8], %b: i32[4,8], %f: f32[4,8]) {
  %0 = embedding(%w, %ids) : f32[4,3,8]
  %1 = gather(%x, %i) {dim=0} : f32[5,8]
  %2 = index(%x, %ids) {positions=[0]} : f32[4,3,8]
  %3 = floor_divide(%a, %b) : i32[4,8]
  %4 = remainder(%a, %b) : i32[4,8]
  %5 = fmod(%a, %b) : i32[4,8]
  %6 = floor_divide(%f, %f) : f32[4,8]
  %7 = remainder(%f, %f) : f32[4,8]
  %8 = fmod(%f, %f) : f32[4,8]
  %9 = log1p(%f) : f32[4,8]
  %10 = ceil(%f) : f32[4,8]
  %11 = sign(%f) : f32[4,8]
  return %0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11
}
"""


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_checked_indices_and_divisions_compile_with_nvcc(tmp_path) -> None:
    """Kernels with index checks, integer division checks and the division helpers (f32 and i32)."""
    from lamina.ir import parse

    graph = fuse(parse(CHECKED_GRAPH))
    kernels = [k for _, k in lower_kernels(graph)]
    assert sum(len(k.checks) for k in kernels) == 6  # three indices, three integer divisions
    source = PRELUDE + "\n".join(cuda_source(k, prelude=False) for k in kernels)
    assert "lm_index(" in source and "lm_wrap_index(" in source and "lm_int_floor_divide(" in source
    path = tmp_path / "checked.cu"
    path.write_text(source)
    done = subprocess.run([NVCC, "-ptx", "-arch=sm_90", str(path), "-o", str(tmp_path / "checked.ptx")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
