"""qlinear's CUDA C kernels: every variant compiles with nvcc (no GPU needed); on a GPU they match the
interpreter."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import lamina
from lamina.codegen.qlinear_cpu import QLinearVariant
from lamina.codegen.qlinear_cuda import qlinear_cuda_name, qlinear_cuda_source, vector_path
from lamina.ir.interpreter import interpret
from lamina.ir.quant_format import QuantFormat

NVCC = shutil.which("nvcc")
VARIANTS = [QLinearVariant(QuantFormat(bits, group, scheme), k, True)
            for bits in (8, 4) for scheme in ("sym", "asym") for group, k in ((0, 128), (32, 128), (128, 256), (0, 99))
            if not (bits == 4 and k == 99)]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_every_variant_compiles_with_nvcc(tmp_path) -> None:
    source = "\n".join(qlinear_cuda_source(v) for v in VARIANTS)
    (tmp_path / "q.cu").write_text(source)
    done = subprocess.run([NVCC, "-ptx", "-arch=sm_90", str(tmp_path / "q.cu"), "-o", str(tmp_path / "q.ptx")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ptx = (tmp_path / "q.ptx").read_text()
    for v in VARIANTS:
        assert f".entry {qlinear_cuda_name(v)}(" in ptx


def test_packed_rows_are_read_as_vectors_and_reduced_by_shuffles() -> None:
    for v in VARIANTS:
        source = qlinear_cuda_source(v)
        assert "__shfl_down_sync" in source
        assert ("uint4" in source) == vector_path(v.fmt, v.k)
    assert not vector_path(QuantFormat(8, 0), 99) and vector_path(QuantFormat(4, 32), 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("rows", [1, 3, 40])
@pytest.mark.parametrize("fmt", ["bits=8,group=0", "bits=8,group=32,scheme=asym", "bits=4,group=32",
                                 "bits=4,group=128,scheme=asym"])
def test_cuda_matches_the_interpreter(fmt: str, rows: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 96), nn.GELU()).eval()
    x = torch.randn(rows, 256)
    compiled = lamina.compile(model.cuda(), (x.cuda(),), backend="cuda", pipeline=f"quantize{{{fmt},keep=none}},fuse",
                              poison=True)
    params = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    (want,) = interpret(compiled.graph, [x.numpy()], params)
    with torch.no_grad():
        got = compiled(x.cuda()).cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
