"""Self-speculative greedy decoding (lamina/speculative.py): the skipped draft proposes, the full model verifies;
the tokens equal full greedy decoding for every lookahead, and the cache holds only verified positions."""
from __future__ import annotations

import pytest
import torch

import lamina
from lamina.models.hf import tiny_hf_model
from lamina.speculative import SpeculativeDecoder, SpeculativeError

NEW = 16


def _greedy(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tokens_equal_full_greedy_decoding_for_every_lookahead(arch: str) -> None:
    model = tiny_hf_model(arch, layers=4)
    ids = torch.randint(1, 128, (1, 7), generator=torch.Generator().manual_seed(1))
    want = _greedy(model, ids)
    decoder = SpeculativeDecoder(model, "skip{speedup=1.3}", lookahead=1)
    for k in range(1, 7):
        decoder.lookahead = k
        result = decoder.generate(ids, NEW)
        assert torch.equal(result.tokens, want), f"lookahead {k}"
        assert result.new_tokens == NEW and 0 <= result.accepted <= result.drafted
    assert len(decoder.modules) == 3  # prefill, draft and verify compiled once for every lookahead


def test_a_draft_that_always_agrees_is_fully_accepted() -> None:
    """A draft pipeline whose skip removes nothing (speedup 1) is the full model: every draft is accepted, and
    a verification emits lookahead + 1 tokens."""
    model = tiny_hf_model("llama", layers=4)
    ids = torch.randint(1, 128, (1, 5), generator=torch.Generator().manual_seed(2))
    result = lamina.generate(model, ids, 13, draft="skip{speedup=1.0}", lookahead=3)
    assert torch.equal(result.tokens, _greedy(model, ids)[:, :5 + 13])
    assert result.acceptance == 1.0
    assert result.full_forwards == 3  # 1 token from prefill, then 4 per verification


def test_the_cache_keeps_only_verified_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before each verification the cache holds exactly the verified prefix (nothing the draft wrote), and the
    verification's own extra positions are cut after it."""
    from lamina import speculative

    lengths: list[tuple[int, int]] = []
    original = speculative._truncate

    def watch(cache: object, length: int) -> None:
        original(cache, length)
        keys = [layer.keys for layer in cache.layers]  # type: ignore[attr-defined]
        assert all(k.shape[-2] == length for k in keys)  # every layer cut: no stale positions at the end
        lengths.append((length, keys[0].shape[-2]))

    monkeypatch.setattr(speculative, "_truncate", watch)
    model = tiny_hf_model("llama", layers=4)
    ids = torch.randint(1, 128, (1, 6), generator=torch.Generator().manual_seed(3))
    result = lamina.generate(model, ids, 10, draft="skip{speedup=1.3}", lookahead=4)
    assert torch.equal(result.tokens, _greedy(model, ids)[:, :16])
    assert lengths and lengths[0][0] == 6


@pytest.mark.parametrize("kwargs, message", [
    (dict(draft="skip{speedup=1.5}", lookahead=0), "lookahead=0"),
    (dict(draft="canonicalize,fuse", lookahead=2), "no skip pass"),
])
def test_bad_options_are_errors_naming_them(kwargs: dict, message: str) -> None:
    with pytest.raises(SpeculativeError, match=message):
        lamina.generate(tiny_hf_model("llama", layers=4), torch.ones(1, 3, dtype=torch.long), 4, **kwargs)


def test_one_sequence_at_a_time() -> None:
    with pytest.raises(SpeculativeError, match=r"\[1, tokens\]"):
        lamina.generate(tiny_hf_model("llama", layers=4), torch.ones(2, 3, dtype=torch.long), 4,
                        draft="skip{speedup=1.3}")
