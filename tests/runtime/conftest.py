"""Helpers of the runtime tests: lamina's own C GEMM and convolution forced on where this CPU can run them."""
from __future__ import annotations

import pytest
import torch

from lamina.runtime.gemm_choice import GemmChoice
from lamina.runtime.native_kernels import compiler, cpu_features

# the backend takes its C GEMM and convolution for every shape on AMD CPUs with AVX-512, the GEMM for some on
# Intel's (``runtime/gemm_choice.py``); modules marked ``C_GEMM`` force both on for every shape wherever the CPU
# has AVX-512 and a C compiler is at hand
C_GEMM = [pytest.mark.skipif(compiler() is None or "avx512f" not in cpu_features(),
                             reason="lamina's C GEMM needs a C compiler and AVX-512"),
          pytest.mark.usefixtures("c_gemm")]


@pytest.fixture
def c_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GemmChoice, "for_this_cpu", staticmethod(lambda: GemmChoice("all")))


def trained_norms(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in eval mode) with batch norm statistics and scales away from the identity, as trained ones are,
    so that folding them into the layers before is visible in the outputs."""
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.data.uniform_(0.5, 2)
    return model.eval()
