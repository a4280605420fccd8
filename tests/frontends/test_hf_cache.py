"""transformers causal LMs through lamina.compile as users call them: default config (the KV cache on),
the ModelOutput with its DynamicCache back, and a compiled decode step that takes the cache."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import lamina  # noqa: E402
from lamina.models.hf import tiny_hf_model  # noqa: E402

from tests.conftest import rel_error  # noqa: E402


def _leaves(cache: object) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(cache) if isinstance(t, torch.Tensor)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "llama", "opt"])
def test_prefill_returns_the_cache_and_a_decode_step_takes_it_back(arch: str) -> None:
    model = tiny_hf_model(arch)
    prompt = torch.randint(1, 128, (1, 7))
    with torch.no_grad():
        prefill = lamina.compile(model, (prompt,), fallback=False)
        got, want = prefill(prompt), model(prompt)
        assert type(got) is type(want) and type(got.past_key_values) is type(want.past_key_values)
        assert rel_error(got.logits, want.logits) <= 1e-5
        for g, w in zip(_leaves(got.past_key_values), _leaves(want.past_key_values), strict=True):
            assert rel_error(g, w) <= 1e-5
        token = got.logits[:, -1:].argmax(-1)
        decode = lamina.compile(model, (token,), example_kwargs={"past_key_values": got.past_key_values},
                                dynamic_shapes="auto", fallback=False)
        cache, eager_cache = got.past_key_values, want.past_key_values
        tokens, eager_tokens = [token], [want.logits[:, -1:].argmax(-1)]
        for _ in range(5):  # one compiled decode module for every cache length
            step = decode(tokens[-1], past_key_values=cache)
            eager = model(eager_tokens[-1], past_key_values=eager_cache)
            assert rel_error(step.logits, eager.logits) <= 1e-5
            cache, eager_cache = step.past_key_values, eager.past_key_values
            tokens.append(step.logits[:, -1:].argmax(-1))
            eager_tokens.append(eager.logits[:, -1:].argmax(-1))
    assert torch.equal(torch.cat(tokens, 1), torch.cat(eager_tokens, 1))


def test_positional_arguments_of_a_keyword_traced_model_are_checked() -> None:
    model = tiny_hf_model("bert", layers=1)
    ids = torch.randint(1, 128, (2, 5))
    with torch.no_grad():
        compiled = lamina.compile(model, (ids,), example_kwargs={"attention_mask": torch.ones_like(ids)})
        mask = torch.ones_like(ids)
        mask[0, :2] = 0
        assert rel_error(compiled(ids, attention_mask=mask).last_hidden_state,
                         model(ids, attention_mask=mask).last_hidden_state) <= 1e-5
        assert rel_error(compiled(input_ids=ids, attention_mask=mask).last_hidden_state,
                         model(ids, attention_mask=mask).last_hidden_state) <= 1e-5
        with pytest.raises(lamina.InputMismatchError, match="positional"):
            compiled(ids, mask, ids)
