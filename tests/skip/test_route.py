"""Run-time skipping: the route op, program state, and skip{policy=router|temporal} on CharGPT's prefill and decode."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

import lamina
from lamina.ir.errors import IRParseError
from lamina.ir.interpreter import interpret
from lamina.ir.parser import parse
from lamina.ir.printer import print_graph
from lamina.models.char_gpt import CharGPT, Decode, Prefill, greedy
from lamina.options import CompileOptions
from lamina.passes.manager import backend_pipeline, run_pipeline, run_steps
from lamina.passes.skip import SkipError
from lamina.backends import backend

ROUTE = """graph @g(%x: f32[4,8], %d: bool[]) {
  %y, %z = route(%d, %x) {otherwise=[0, -1]} {
  ^(%a: f32[4,8]):
    %b = exp(%a) : f32[4,8]
    %c = add(%b, %a) : f32[4,8]
    yield %b, %c
  } : f32[4,8], f32[4,8]
  return %y, %z
}
"""

COUNTER = """graph @g(%x: f32[3], %n: i64[]) states(
    %n = 0.0 "calls"
) {
  %one = full() {shape=[], value=1, dtype=i64} : i64[]
  %m = add(%n, %one) : i64[]
  %f = cast(%n) {dtype=f32} : f32[]
  %y = mul(%x, %f) : f32[3]
  return %y, %m
}
"""


def _cpu(graph: lamina.Graph):
    lowered = run_steps(graph, backend_pipeline(None, "cpu")).graph
    return backend("cpu").make_executor(lowered, CompileOptions(poison=True))


@pytest.mark.parametrize("taken", [True, False])
def test_route_runs_its_region_or_passes_the_otherwise_values(taken: bool) -> None:
    graph = parse(ROUTE)
    assert print_graph(parse(print_graph(graph))) == print_graph(graph)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    want = [np.exp(x), np.exp(x) + x] if taken else [x, np.zeros_like(x)]
    for got in (interpret(graph, [x, np.array(taken)]), _cpu(graph)([torch.from_numpy(x), torch.tensor(taken)], {})):
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6)


@pytest.mark.parametrize("bad, message", [
    ("%d: bool[]", None),
    ("%d: f32[]", "route decision must be a bool scalar"),
    ("%d: bool[2]", "route decision must be a bool scalar"),
])
def test_route_checks_its_decision(bad: str, message: str | None) -> None:
    text = ROUTE.replace("%d: bool[]", bad)
    if message is None:
        parse(text)
        return
    with pytest.raises(IRParseError, match=message):
        parse(text)


def test_route_checks_its_otherwise_values() -> None:
    with pytest.raises(IRParseError, match=r"otherwise\[1\]=3 is not an input"):
        parse(ROUTE.replace("otherwise=[0, -1]", "otherwise=[0, 3]"))
    with pytest.raises(IRParseError, match="has 2 results but otherwise names 1"):
        parse(ROUTE.replace("otherwise=[0, -1]", "otherwise=[0]"))


def test_constant_op_in_the_interpreter_and_on_the_cpu() -> None:
    graph = parse("""graph @g(%x: f32[2,3]) {
  %w = constant() {value=[1.0, -2.0, 0.5, 3.0, 0.0, 1.5], shape=[2, 3], dtype=f32} : f32[2,3]
  %y = linear(%x, %w) : f32[2,2]
  return %y
}
""")
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    want = x @ np.array([[1.0, -2.0, 0.5], [3.0, 0.0, 1.5]], np.float32).T
    np.testing.assert_allclose(interpret(graph, [x])[0], want, rtol=1e-6)
    np.testing.assert_allclose(_cpu(graph)([torch.from_numpy(x)], {})[0].numpy(), want, rtol=1e-6)
    with pytest.raises(IRParseError, match="5 values do not fill shape"):
        parse(print_graph(graph).replace("value=[1.0, -2.0, 0.5, 3.0, 0.0, 1.5]", "value=[1.0, -2.0, 0.5, 3.0, 0.0]"))


def test_states_print_parse_and_are_checked() -> None:
    graph = parse(COUNTER)
    assert [(s.key, s.init) for s in graph.states] == [("calls", 0.0)]
    assert print_graph(parse(print_graph(graph))) == print_graph(graph)
    assert graph.user_inputs == graph.inputs[:1] and graph.user_outputs == graph.outputs[:1]
    with pytest.raises(IRParseError, match="state 'calls' is i64\\[\\] but its new value"):
        parse(COUNTER.replace("return %y, %m", "return %y, %f"))
    with pytest.raises(IRParseError, match="must be one of the last 1 inputs"):
        parse(COUNTER.replace("%x: f32[3], %n: i64[]", "%n: i64[], %x: f32[3]"))


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_a_state_is_kept_between_calls_and_reset(backend_name: str) -> None:
    """A compiled module feeds a state's new value to its next call; modules sharing a ProgramState share it."""
    import torch.utils._pytree as pytree

    from lamina.api import compile_imported
    from lamina.frontends.fx import Imported, InputRole

    imported = Imported(parse(COUNTER), {}, (InputRole(0),), pytree.tree_flatten(((0,), {}))[1],
                        pytree.tree_flatten(0)[1])
    state = lamina.ProgramState()
    options = CompileOptions(backend=backend_name, state=state)
    first, second = (compile_imported(imported, options) for _ in range(2))
    x = torch.ones(3)
    assert first(x).tolist() == [0, 0, 0]
    assert first(x).tolist() == [1, 1, 1]
    assert second(x).tolist() == [2, 2, 2]  # the same state
    state.reset()
    assert second(x).tolist() == [0, 0, 0]


# --- skip{policy=router} -------------------------------------------------------------------------------------

LAYERS = 8


@pytest.fixture(scope="module")
def char_gpt(tmp_path_factory):
    torch.manual_seed(0)
    model = CharGPT(96, 64, 4, LAYERS, max_len=64).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 96, (4, 16), generator=gen) for _ in range(4)]
    calibration = lamina.calibrate(model, batches, cache_dir=tmp_path_factory.mktemp("calibration"))
    prompt = torch.randint(0, 96, (1, 12), generator=gen)
    return model, calibration, prompt


def _compiled_pair(model: CharGPT, prompt: torch.Tensor, pipeline: str, calibration, state):
    prefill, decode = Prefill(model), Decode(model)
    with torch.no_grad():
        _, keys, values = prefill(prompt)
    past = Dim("past")
    fast_prefill = lamina.compile(prefill, (prompt,), pipeline=pipeline, calibration=calibration, state=state,
                                  dynamic_shapes=({1: Dim("tokens")},), poison=True)
    fast_decode = lamina.compile(decode, (prompt[:, :1], keys, values), pipeline=pipeline, calibration=calibration,
                                 state=state, dynamic_shapes=(None, {3: past}, {3: past}), poison=True)
    return fast_prefill, fast_decode


def _without(model: CharGPT, removed: list[int]) -> CharGPT:
    out = copy.deepcopy(model)
    out.h = nn.ModuleList(b for i, b in enumerate(out.h) if i not in removed)
    return out


def test_router_keeping_every_layer_is_token_identical_in_prefill_and_decode(char_gpt) -> None:
    model, calibration, prompt = char_gpt
    state = lamina.ProgramState()
    fast_prefill, fast_decode = _compiled_pair(model, prompt, "canonicalize,skip{policy=router,speedup=1},fuse",
                                               calibration, state)
    assert sum(op.name == "route" for op in fast_decode.graph.ops) == LAYERS - 2  # the first and last are kept
    assert "route(" in str(fast_prefill.graph) and "states(" in str(fast_prefill.graph)
    with torch.no_grad():
        want = greedy(Prefill(model), Decode(model), prompt, 12)
        got = greedy(fast_prefill, fast_decode, prompt, 12)
        full = Prefill(model)(prompt)[0]
        state.reset()
        torch.testing.assert_close(fast_prefill(prompt)[0], full, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, want)
    assert sorted(state.tensors) == [f"route.model.h.{i}" for i in range(1, LAYERS - 1)]
    assert all(t.tolist() == [1] for t in state.tensors.values())  # every block ran, for the prompt and after


def test_router_decides_at_prefill_and_keeps_the_decision_for_the_decode(char_gpt) -> None:
    """Each sequence skips the blocks its prompt's routers chose, in the prefill and every decode step: the
    tokens are those of the model without those blocks; the skipped blocks' cache entries are zeros."""
    model, calibration, prompt = char_gpt
    state = lamina.ProgramState()
    fast_prefill, fast_decode = _compiled_pair(model, prompt, "canonicalize,skip{policy=router,speedup=1.6},fuse",
                                               calibration, state)
    note = next(h for h in fast_prefill.graph.history if h.startswith("skip:"))
    assert note.startswith("skip: router, 6 of 8 blocks routed (model.h.1, ") and "predicted speedup 1.60x" in note
    with torch.no_grad():
        got = greedy(fast_prefill, fast_decode, prompt, 12)
        skipped = [int(k.rsplit(".", 1)[1]) for k, t in state.tensors.items() if t.tolist() == [0]]
        assert skipped, "the routers skip some block for this prompt"
        reduced = _without(model, skipped)
        assert torch.equal(got, greedy(Prefill(reduced), Decode(reduced), prompt, 12))
        state.reset()
        _, keys, _ = fast_prefill(prompt)
    for layer in range(LAYERS):
        assert bool((keys[layer] == 0).all()) == (layer in skipped)


def test_router_errors_name_the_option(char_gpt) -> None:
    model, calibration, prompt = char_gpt
    graph = run_pipeline(lamina.trace(model, (prompt,)), "canonicalize")
    with pytest.raises(SkipError, match="policy=router needs calibration"):
        run_pipeline(graph, "skip{policy=router,speedup=1.2}")
    with pytest.raises(SkipError, match=r"speedup=9 is more than skipping all 6 routed blocks"):
        run_pipeline(graph, "skip{policy=router,speedup=9}", calibration=calibration)
    with pytest.raises(SkipError, match="period= is temporal's option"):
        run_pipeline(graph, "skip{policy=router,period=2}", calibration=calibration)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="keeps tensors between calls"):
        compiled = torch.compile(model, backend="lamina",
                                 options={"pipeline": "canonicalize,skip{policy=temporal,period=2},fuse"})
        with torch.no_grad():
            compiled(prompt)


# --- skip{policy=temporal} ------------------------------------------------------------------------------------

def _temporal_reference(model: CharGPT, tokens: torch.Tensor, prompt_len: int, routed: set[int],
                        period: int) -> list[torch.Tensor]:
    """Eager LoRA-Drop: the logits of each call (the prompt, then one token per call) when blocks ``routed``
    compute their update on calls 0, P, 2P, ... and add their last computed update (of the call's last
    token) otherwise; their keys and values are computed every call."""
    cached: dict[int, torch.Tensor] = {}
    keys: list[torch.Tensor | None] = [None] * len(model.h)
    values: list[torch.Tensor | None] = [None] * len(model.h)
    out = []
    calls = [tokens[:, :prompt_len]] + [tokens[:, i:i + 1] for i in range(prompt_len, tokens.shape[1])]
    for call, idx in enumerate(calls):
        x = model.embed(idx, 0 if call == 0 else keys[0].shape[2])
        for i, block in enumerate(model.h):
            if i in routed and call % period:
                _, k, v = block.qkv(x)
                y = x + cached[i]
            else:
                y, k, v = block(x) if call == 0 else block(x, keys[i], values[i])
                if i in routed:
                    cached[i] = (y - x)[:, -1:]
            keys[i] = k if call == 0 else torch.cat([keys[i], k], 2)
            values[i] = v if call == 0 else torch.cat([values[i], v], 2)
            x = y
        out.append(model.head(x))
    return out


@pytest.mark.parametrize("period", [1, 2, 3])
def test_temporal_refreshes_every_period_calls_as_eager_would(char_gpt, period: int) -> None:
    """period=1 is the full model; otherwise every call matches the eager reuse of the last update."""
    model, calibration, prompt = char_gpt
    state = lamina.ProgramState()
    fast_prefill, fast_decode = _compiled_pair(model, prompt, f"canonicalize,skip{{policy=temporal,period={period}}},fuse",
                                               calibration, state)
    assert sum(op.name == "route" for op in fast_decode.graph.ops) == LAYERS - 2
    tokens = torch.cat([prompt, torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(5))], 1)
    with torch.no_grad():
        want = _temporal_reference(model, tokens, prompt.shape[1], set(range(1, LAYERS - 1)), period)
        full = _temporal_reference(model, tokens, prompt.shape[1], set(), 1)
        logits, keys, values = fast_prefill(prompt)
        got = [logits]
        for i in range(prompt.shape[1], tokens.shape[1]):
            logits, k, v = fast_decode(tokens[:, i:i + 1], keys, values)
            keys, values = torch.cat([keys, k], 3), torch.cat([values, v], 3)
            got.append(logits)
    for g, w, f in zip(got, want, full):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
        if period == 1:
            torch.testing.assert_close(g, f, rtol=1e-5, atol=1e-5)
    if period > 1:
        assert (got[1] - full[1]).abs().max() > 1e-3  # the reuse changes the numbers


def test_temporal_on_attention_sublayers_keeps_their_cache_entries(char_gpt) -> None:
    """drop=attn:2 with a calibration: the two most similar attention sublayers are refreshed; period 1 is exact."""
    model, calibration, prompt = char_gpt
    fast_prefill, fast_decode = _compiled_pair(model, prompt, "canonicalize,skip{policy=temporal,period=1,drop=attn:2},fuse",
                                               calibration, lamina.ProgramState())
    assert any("temporal, 2 sublayers refreshed every 1 calls" in h for h in fast_prefill.graph.history)
    with torch.no_grad():
        torch.testing.assert_close(greedy(fast_prefill, fast_decode, prompt, 8),
                                   greedy(Prefill(model), Decode(model), prompt, 8))
    with pytest.raises(SkipError, match="period=P, a whole number of calls"):
        run_pipeline(lamina.trace(model, (prompt,)), "skip{policy=temporal}")


def test_a_routed_program_saves_and_loads_with_its_state(char_gpt, tmp_path) -> None:
    """The IR's route ops and states survive lamina.save / lamina.load; the loaded module keeps its own state."""
    model, calibration, prompt = char_gpt
    fast = lamina.compile(Prefill(model), (prompt,), pipeline="canonicalize,skip{policy=router,speedup=1.6},fuse",
                          calibration=calibration)
    fast.save(tmp_path / "routed.lamina")
    loaded = lamina.load(tmp_path / "routed.lamina")
    assert [s.key for s in loaded.graph.states] == [s.key for s in fast.graph.states]
    with torch.no_grad():
        for got, want in zip(loaded(prompt), fast(prompt)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert {k: t.tolist() for k, t in loaded.state.tensors.items()} == {k: t.tolist() for k, t in fast.state.tensors.items()}


@pytest.mark.parametrize("draft", ["skip{policy=router,speedup=1.5}", "skip{policy=temporal,period=2}"])
def test_speculative_drafts_refuse_run_time_skipping(char_gpt, draft: str) -> None:
    model, calibration, prompt = char_gpt
    with pytest.raises(lamina.LaminaError, match="skips at run time with state"):
        lamina.generate(model, prompt, 4, draft=draft, calibration=calibration)
