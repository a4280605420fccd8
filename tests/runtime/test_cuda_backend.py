"""The cuda backend (CUDA C through CuPy, and Numba-CUDA) against eager PyTorch. Needs a GPU; skipped without."""
from __future__ import annotations

import pytest
import torch

import lamina
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp
from lamina.runtime.program import BackendError
from tests.conftest import rel_error
from tests.frontends.test_models import _fresh_like

HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.gpu
F32_TOL = 1e-5  # float32; GPU transcendental functions are within a few ulp of the CPU's


def _cupy_or_skip() -> None:
    pytest.importorskip("cupy", reason="the cuda backend needs CuPy")


@gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("language", ["cuda_c", "numba"])
@pytest.mark.parametrize("factory", [make_mlp, make_gpt2_stack, make_llama_block, make_cnn],
                         ids=["mlp", "gpt2_stack", "llama_block", "cnn"])
def test_cuda_backend_matches_eager(factory, language: str) -> None:
    _cupy_or_skip()
    model, args = factory()
    compiled = lamina.compile(model, args, backend="cuda", kernel_language=language, poison=True)
    for trial in range(2):
        inputs = args if trial == 0 else _fresh_like(args)
        with torch.no_grad():
            expected = model(*inputs)
        got = compiled(*(x.cuda() for x in inputs))
        assert got.is_cuda
        assert rel_error(got.cpu(), expected) <= F32_TOL


@gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
def test_cuda_dynamic_batch() -> None:
    _cupy_or_skip()
    from torch.export import Dim

    model, (idx,) = make_gpt2_stack(batch=2, n_layers=2)
    compiled = lamina.compile(model, (idx,), backend="cuda", dynamic_shapes=({0: Dim("batch")},))
    for batch in (1, 5):
        x = torch.randint(0, 128, (batch, idx.shape[1]))
        with torch.no_grad():
            assert rel_error(compiled(x.cuda()).cpu(), model(x)) <= F32_TOL


@pytest.mark.skipif(HAS_GPU, reason="checks the error raised without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    model, args = make_mlp()
    with pytest.raises(BackendError, match="backend 'cuda' needs an NVIDIA GPU"):
        lamina.compile(model, args, backend="cuda")


@gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("language", ["cuda_c", "numba"])
def test_cuda_backend_on_a_side_stream(language: str) -> None:
    _cupy_or_skip()
    model, args = make_gpt2_stack(n_layers=2)
    compiled = lamina.compile(model, args, backend="cuda", kernel_language=language, poison=True)
    stream = torch.cuda.Stream()
    x = args[0].cuda()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = compiled(x)
    torch.cuda.synchronize()
    with torch.no_grad():
        assert rel_error(got.cpu(), model(*args)) <= F32_TOL


@gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("language", ["cuda_c", "numba"])
@pytest.mark.parametrize("pipeline", ["canonicalize,newton{iters=3,chunk=3},newton-expand,fuse",
                                      "canonicalize,newton{iters=3,chunk=3,tol=1e-9},newton-expand,fuse"],
                         ids=["fixed", "tol"])
def test_cuda_newton_decode_matches_eager(language: str, pipeline: str) -> None:
    """A decode step with KV caches solved by Newton iterations (K = chunk: exact) on the GPU."""
    _cupy_or_skip()
    from lamina.models.char_gpt import Decode, Prefill, make_char_gpt

    model, (idx,) = make_char_gpt(n_layers=6, seq=16)
    with torch.no_grad():
        _, keys, values = Prefill(model)(idx)
        args = (idx[:, -1:], keys, values)
        want = Decode(model)(*args)
    compiled = lamina.compile(Decode(model), args, pipeline=pipeline, backend="cuda", kernel_language=language,
                              poison=True)
    got = compiled(*(a.cuda() for a in args))
    for g, w in zip(got, want):
        assert rel_error(g.cpu(), w) <= F32_TOL
