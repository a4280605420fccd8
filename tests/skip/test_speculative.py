"""Self-speculative greedy decoding (lamina/speculative.py): the skipped draft proposes, the full model verifies;
the tokens equal full greedy decoding for every lookahead, and the cache holds only verified positions."""
from __future__ import annotations

import pytest
import torch

import lamina
from lamina.models.hf import tiny_hf_model
from lamina.speculative import SpeculativeDecoder, SpeculativeError

NEW = 16


def poison(cache: torch.Tensor) -> None:
    """Fill ``cache`` with what no valid key or value is (huge, of either sign), so that a position read as
    visible wrecks the result. Not NaN: attention masks such positions, and even torch's sum would take a
    masked NaN in as 0 * NaN."""
    cache.copy_(torch.randn(cache.shape, generator=torch.Generator().manual_seed(cache.numel())) * 1e6)


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


def test_char_gpt_tokens_equal_its_greedy_decoding_for_every_lookahead() -> None:
    from lamina.models.char_gpt import CharGPT, Decode, Prefill, greedy

    torch.manual_seed(4)
    model = CharGPT(d_model=64, n_heads=4, n_layers=6, max_len=128).eval()
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = torch.cat([ids, greedy(Prefill(model), Decode(model), ids, NEW)], 1)
    decoder = SpeculativeDecoder(model, "skip{speedup=1.5}", lookahead=1)
    for k in range(1, 7):
        decoder.lookahead = k
        assert torch.equal(decoder.generate(ids, NEW).tokens, want), f"lookahead {k}"


def test_verifying_several_char_gpt_tokens_equals_decoding_them_one_by_one() -> None:
    """Decode with several new tokens (the verification) attends causally within them."""
    from lamina.models.char_gpt import CharGPT, Decode, Prefill

    torch.manual_seed(5)
    model = CharGPT(d_model=32, n_heads=2, n_layers=2, max_len=64).eval()
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        _, keys, values = Prefill(model)(ids[:, :8])
        together, k4, v4 = Decode(model)(ids[:, 8:], keys, values)
        one_by_one = []
        for i in range(8, 12):
            logits, k, v = Decode(model)(ids[:, i:i + 1], keys, values)
            keys, values = torch.cat([keys, k], 3), torch.cat([values, v], 3)
            one_by_one.append(logits)
    torch.testing.assert_close(together, torch.cat(one_by_one, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k4, keys[:, :, :, 8:], rtol=1e-5, atol=1e-6)


def test_static_decode_of_several_tokens_equals_decoding_them_one_by_one() -> None:
    """StaticDecode with several new tokens (the in-place verification) attends causally within them, writes
    each one's keys and values at its position, and reads nothing past the last of them."""
    from lamina.models.char_gpt import CharGPT, Prefill, StaticDecode, static_caches

    torch.manual_seed(5)
    model = CharGPT(d_model=32, n_heads=2, n_layers=2, max_len=64).eval()
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        _, keys, values = Prefill(model)(ids[:, :8])
        together = static_caches(keys, values, 20)
        for cache in together:
            poison(cache[:, :, 12:])  # past the new tokens: never read
        (logits,) = StaticDecode(model)(ids[:, 8:], torch.arange(8, 12), *together)
        compiled = lamina.compile(StaticDecode(model), (ids[:, 8:], torch.arange(8, 12), *static_caches(keys, values, 20)),
                                  poison=True, fallback=False)
        compiled_caches = [c.clone() for c in together]
        for cache in compiled_caches:
            poison(cache[:, :, 8:])
        (compiled_logits,) = compiled(ids[:, 8:], torch.arange(8, 12), *compiled_caches)
        one_by_one, caches = [], static_caches(keys, values, 20)
        for i in range(8, 12):
            one_by_one.append(StaticDecode(model)(ids[:, i:i + 1], torch.tensor([i]), *caches)[0])
    torch.testing.assert_close(logits, torch.cat(one_by_one, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_logits, logits, rtol=1e-5, atol=1e-5)
    for got, want in zip(compiled_caches, caches):
        torch.testing.assert_close(got[:, :, :12], want[:, :, :12], rtol=1e-5, atol=1e-6)


def test_a_skip_pass_with_several_options_drafts_in_the_full_pipeline() -> None:
    """A draft that is one skip pass, whatever commas its options have, runs inside the decoder's pipeline, so it
    is fused as the full model is; one of several passes is a pipeline of its own."""
    model = tiny_hf_model("llama", layers=4)
    decoder = SpeculativeDecoder(model, "skip{policy=exit,speedup=2}", lookahead=2)
    assert decoder.draft_pipeline == "canonicalize,skip{policy=exit,speedup=2},fuse"
    assert SpeculativeDecoder(model, "canonicalize,skip{speedup=2},fuse").draft_pipeline == \
        "canonicalize,skip{speedup=2},fuse"
    decoder.generate(torch.randint(1, 128, (1, 5), generator=torch.Generator().manual_seed(3)), 6)

    def kernels(role: str) -> int:
        return sum(op.name == "fused" for op in decoder.modules[role].graph.ops)

    assert kernels("draft") < kernels("verify")  # half the blocks, fused alike (unfused: one kernel per op)


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
    original = speculative.HFSession.truncate

    def watch(session: speculative.HFSession, length: int) -> None:
        original(session, length)
        keys = [layer.keys for layer in session.cache.layers]
        assert all(k.shape[-2] == length for k in keys)  # every layer cut: no stale positions at the end
        lengths.append((length, keys[0].shape[-2]))

    monkeypatch.setattr(speculative.HFSession, "truncate", watch)
    model = tiny_hf_model("llama", layers=4)
    ids = torch.randint(1, 128, (1, 6), generator=torch.Generator().manual_seed(3))
    result = lamina.generate(model, ids, 10, draft="skip{speedup=1.3}", lookahead=4)
    assert torch.equal(result.tokens, _greedy(model, ids)[:, :16])
    assert lengths and lengths[0][0] == 6


def test_generation_ends_after_the_end_of_sequence_token_as_generate_does() -> None:
    """Without min_new_tokens, generate stops at the model's EOS token; so does the speculative decoder."""
    model = tiny_hf_model("gpt2", layers=4)
    ids = torch.randint(1, 128, (1, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
    stop = int(plain[0, 6 + 2])  # a token greedy decoding produces early, taken as the end of sequence
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                              eos_token_id=stop)
    got = lamina.generate(model, ids, NEW, draft="skip{speedup=1.3}", lookahead=3, eos_token_id=stop)
    assert want.shape[1] < ids.shape[1] + NEW
    assert torch.equal(got.tokens, want)


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


def test_char_gpt_rollback_leaves_nothing_stale_to_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """CharGPT's caches are preallocated and cut back by length alone: every position past the verified length
    is poisoned at each cut, and the tokens still equal greedy decoding, so nothing stale is ever read as a
    key or value. The draft's removed blocks write no entries (cache=skip), and the verification writes them."""
    from lamina import speculative
    from lamina.models.char_gpt import CharGPT, Decode, Prefill, greedy

    torch.manual_seed(7)
    model = CharGPT(d_model=64, n_heads=4, n_layers=6, max_len=128).eval()
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = torch.cat([ids, greedy(Prefill(model), Decode(model), ids, NEW)], 1)
    cuts: list[int] = []
    original = speculative.CharGPTSession.truncate

    def poisoning(session: speculative.CharGPTSession, length: int) -> None:
        original(session, length)
        for cache in session.caches:
            poison(cache[:, :, length:])
        cuts.append(length)

    monkeypatch.setattr(speculative.CharGPTSession, "truncate", poisoning)
    decoder = SpeculativeDecoder(model, "skip{policy=exit,speedup=2}", lookahead=3)
    assert torch.equal(decoder.generate(ids, NEW).tokens, want)
    assert cuts and "cache=skip" in str(decoder.in_place_draft_pipeline())
    assert any("leave their caches unwritten" in h for h in decoder.modules["draft"].graph.history)


def test_char_gpt_generation_longer_than_its_positions_is_an_error() -> None:
    from lamina.models.char_gpt import CharGPT

    model = CharGPT(d_model=32, n_heads=2, n_layers=2, max_len=16).eval()
    with pytest.raises(SpeculativeError, match="need 22 positions; this CharGPT has 16"):
        lamina.generate(model, torch.ones(1, 5, dtype=torch.long), 12, draft="skip{speedup=1.3}", lookahead=4)
