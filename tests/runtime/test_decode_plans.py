"""Decoding with a growing KV cache plans once: no plan per token, no recompilation per token, and an
arena whose growth is logarithmic in the length (counted by the executor, never timed)."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

import lamina  # noqa: E402
from lamina.dynamo import LaminaBackend  # noqa: E402

STEPS = 50


def _llama(positions: int = 128) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=positions, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def _greedy(step: object, prompt: torch.Tensor, steps: int, after_step: object = None) -> torch.Tensor:
    """Prefill then ``steps`` decode steps with ``step(ids, cache)``; ``after_step(i)`` after each decode step."""
    out = step(prompt, None)
    tokens = [out.logits[:, -1:].argmax(-1)]
    cache = out.past_key_values
    for i in range(steps):
        out = step(tokens[-1], cache)
        cache = out.past_key_values
        tokens.append(out.logits[:, -1:].argmax(-1))
        if after_step is not None:
            after_step(i)
    return torch.cat(tokens, 1)


def test_torch_compile_decode_compiles_and_plans_at_most_twice_in_50_steps() -> None:
    """Through torch.compile with transformers' DynamicCache: the prefill is one graph; over 50 decode
    steps with a new cache length each, dynamo compiles at most two graphs (the first step's static one,
    then a dynamic one) and lamina builds at most two plans; the tokens equal eager greedy decoding."""
    model = _llama()
    prompt = torch.randint(1, 128, (1, 16))
    backend = LaminaBackend()
    forward = torch.compile(model.forward, backend=backend)
    counts = []
    with torch.no_grad():
        want = _greedy(lambda ids, cache: model(ids, past_key_values=cache), prompt, STEPS)

        def after(i: int) -> None:
            counts.append((backend.stats.graphs, backend.plan_builds()))

        torch._dynamo.reset()
        got = _greedy(lambda ids, cache: forward(input_ids=ids, past_key_values=cache), prompt, STEPS, after)
    assert torch.equal(got, want)
    assert backend.stats.eager_graphs == 0 and backend.stats.partitioned_graphs == 0
    graphs_before, builds_before = 1, 1  # the prefill's
    graphs, builds = counts[-1]
    assert graphs - graphs_before <= 2 and builds - builds_before <= 2, counts
    assert counts[2] == counts[-1]  # from the third step on, nothing is compiled or planned


def test_lamina_compile_decode_of_500_tokens_keeps_one_plan_and_a_bounded_arena() -> None:
    """lamina.compile's decode module over 500 tokens: one plan for every length, an arena that grows
    only when the length passes a power of two, to at most twice what the longest call needs."""
    model = _llama(positions=1024)
    prompt = torch.randint(1, 128, (1, 12))
    steps = 500
    modules: dict[str, object] = {}
    infos = []

    def step(ids: torch.Tensor, cache: object) -> object:
        if cache is None:
            modules["prefill"] = lamina.compile(model, (ids,), fallback=False)
            return modules["prefill"](ids)
        if "decode" not in modules:
            modules["decode"] = lamina.compile(model, (ids,), example_kwargs={"past_key_values": cache},
                                               dynamic_shapes="auto", fallback=False, poison=True)
        return modules["decode"](ids, past_key_values=cache)

    with torch.no_grad():
        want = _greedy(lambda ids, cache: model(ids, past_key_values=cache), prompt, steps)
        got = _greedy(step, prompt, steps, lambda i: infos.append(modules["decode"].plan_cache))
    assert torch.equal(got, want)
    final = infos[-1]
    assert all(info.plans == 1 and info.builds == 1 for info in infos)
    longest = prompt.shape[1] + steps
    assert final.arena_grows <= math.ceil(math.log2(longest)) + 1
    (plan,) = modules["decode"]._executor.plans.values()
    if plan.growing is not None:  # values that follow the length: laid out for at most twice it
        assert all(c <= 2 * longest for c in plan.growing.capacity)
        assert plan.growing.bytes <= sum(plan.growing.nbytes(plan.growing.capacity)) + 64 * len(plan.growing.spans)
    assert final.arena_bytes == plan.arena_bytes
    # the arena changes only when it grows: a logarithmic number of sizes over 500 tokens
    assert len({info.arena_bytes for info in infos}) <= final.arena_grows + 1


def test_static_cache_decodes_with_one_graph_and_one_plan_under_both_entry_points() -> None:
    """transformers' StaticCache: every decode step has the same shapes, so torch.compile compiles one
    decode graph and lamina.compile's module one plan; the cache is written in place (no copy back),
    and the tokens equal eager greedy decoding with the same cache."""
    from transformers import StaticCache

    model = _llama()
    prompt = torch.randint(1, 128, (1, 8))
    steps = 20
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                              cache_implementation="static")

        backend = LaminaBackend()
        torch._dynamo.reset()
        saved, model.forward = model.forward, torch.compile(model.forward, backend=backend)
        try:
            got = model.generate(prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                 cache_implementation="static")
        finally:
            model.forward = saved
        assert torch.equal(got, want)
        assert backend.stats.graphs <= 2 and backend.plan_builds() <= 2  # the prefill's and the decode step's

        cache = StaticCache(config=model.config, max_cache_len=prompt.shape[1] + steps)
        out = model(prompt, past_key_values=cache, cache_position=torch.arange(prompt.shape[1]))
        tokens = [out.logits[:, -1:].argmax(-1)]
        decode = lamina.compile(model, (tokens[-1],), fallback=False, poison=True,
                                example_kwargs={"past_key_values": cache,
                                                "cache_position": torch.tensor([prompt.shape[1]])})
        keys = cache.layers[0].keys
        address = keys.data_ptr()
        for i in range(steps - 1):
            out = decode(tokens[-1], past_key_values=cache, cache_position=torch.tensor([prompt.shape[1] + i]))
            tokens.append(out.logits[:, -1:].argmax(-1))
        assert cache.layers[0].keys.data_ptr() == address  # written in place
        assert torch.equal(torch.cat([prompt, *tokens], 1), want)
        assert decode.plan_cache.builds == 1
        (plan,) = decode._executor.plans.values()
        assert "index_put_.default(" in plan.source


@pytest.mark.parametrize("pipeline", [None, "canonicalize,newton{iters=2,chunk=2}"], ids=["default", "newton"])
def test_char_gpt_static_decode_writes_its_caches_in_place_with_one_plan(pipeline: str | None) -> None:
    """lamina's own decode path: StaticDecode writes each token's keys and values into preallocated
    caches in place (no concatenation, no copy back), one plan for the whole generation, and the
    tokens equal the concatenating decode's; also with newton (iters = chunk: exact), where the
    updates are made out of place and copied back."""
    from lamina.models.char_gpt import Decode, Prefill, StaticDecode, greedy, greedy_static, make_char_gpt, static_caches

    model, (idx,) = make_char_gpt(n_layers=4, seq=8)
    prefill, decode, static = Prefill(model).eval(), Decode(model).eval(), StaticDecode(model).eval()
    steps, max_len = 20, 32
    with torch.no_grad():
        want = greedy(prefill, decode, idx, steps)
        assert torch.equal(greedy_static(prefill, static, idx, steps, max_len), want)
        _, keys, values = prefill(idx)
        example = (idx[:, -1:], torch.tensor([idx.shape[1]]), *static_caches(keys, values, max_len))
        options = {"pipeline": pipeline} if pipeline else {}
        compiled = lamina.compile(static, example, poison=True, **options)
        got = greedy_static(lamina.compile(prefill, (idx,)), compiled, idx, steps, max_len)
    assert torch.equal(got, want)
    assert compiled.plan_cache.builds == 1
    (plan,) = compiled._executor.plans.values()
    if pipeline is None:  # newton's chunks compute the updates inside their loop: those are copied back
        assert plan.source.count("index_put_.default(") == 2 * len(model.h)
