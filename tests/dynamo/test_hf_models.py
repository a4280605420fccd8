"""HuggingFace models through torch.compile(backend="lamina"): logits match eager, greedy generation identical."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from lamina.dynamo import LaminaBackend  # noqa: E402
from lamina.models.hf import HF_ARCHITECTURES, tiny_hf_model  # noqa: E402

CAUSAL = tuple(a for a in HF_ARCHITECTURES if a != "bert")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _main_output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.slow
@pytest.mark.parametrize("arch", HF_ARCHITECTURES)
def test_forward_matches_eager_with_and_without_mask_and_cache(arch: str) -> None:
    model = tiny_hf_model(arch)
    backend = LaminaBackend({"poison": True})
    compiled = torch.compile(model, backend=backend)
    ids = torch.randint(1, 128, (2, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding in the first row
    calls = [{}, {"attention_mask": mask}]
    if arch in CAUSAL:
        calls = [dict(c, use_cache=u) for c in calls for u in (False, True)]
    with torch.no_grad():
        for kwargs in calls:
            got, want = _main_output(compiled(ids, **kwargs)), _main_output(model(ids, **kwargs))
            assert _rel(got, want) <= 1e-4, (arch, kwargs)
    assert backend.stats.graphs >= 1 and backend.stats.eager_graphs == 0 and backend.stats.fallback_ops == []


@pytest.mark.slow
@pytest.mark.parametrize("arch", CAUSAL)
def test_greedy_generation_is_token_identical(arch: str) -> None:
    reference = tiny_hf_model(arch)
    model = tiny_hf_model(arch)  # same seed, same weights
    backend = LaminaBackend()
    model.forward = torch.compile(model.forward, backend=backend)
    prompt = torch.randint(1, 128, (1, 6))
    with torch.no_grad():
        want = reference.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
        got = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert got.shape == (1, 14) and torch.equal(got, want)
    assert backend.stats.graphs >= 2 and backend.stats.eager_graphs == 0  # prefill and decode compiled


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_newton_under_torch_compile_generates_the_same_tokens(arch: str, tmp_path) -> None:
    """The newton pass on dynamo's prefill and decode graphs (no module paths: blocks are found from the
    period of the layer structures; each layer's cache length is its own symbol): with K = chunk the
    greedy tokens equal eager's, and every graph was solved by Newton iterations (a layer_scan kernel)."""
    reference = tiny_hf_model(arch, layers=4)
    model = tiny_hf_model(arch, layers=4)
    pipeline = "canonicalize,newton{iters=2,chunk=2},newton-expand,fuse"
    backend = LaminaBackend({"pipeline": pipeline, "dump_dir": str(tmp_path)})
    model.forward = torch.compile(model.forward, backend=backend)
    prompt = torch.randint(1, 128, (1, 6))
    with torch.no_grad():
        want = reference.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        got = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)
    graphs = sorted(tmp_path.glob("graph_*"))
    assert len(graphs) >= 2 and backend.stats.eager_graphs == 0
    for graph in graphs:
        (expanded,) = graph.glob("ir/*newton-expand*")
        assert expanded.read_text().count("layer_scan(") == 4, graph  # two chunks, two iterations each
