"""shard{tp=N}: Megatron splits of lamina's GPT-2 and Llama stacks, in the simulated group and in gloo processes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from lamina.distributed import DistributedError, spawn
from lamina.frontends.fx import import_module
from lamina.ir.group import interpret_group
from lamina.ir.interpreter import interpret
from lamina.ir.parser import parse
from lamina.ir.printer import print_graph
from lamina.models.gpt2_stack import make_gpt2_stack
from lamina.models.llama_block import make_llama_block
from lamina.passes.manager import run_pipeline
from lamina.passes.shard import ShardError

def _hf_llama():
    from lamina.models.hf import make_hf_llama

    model, args, _ = make_hf_llama()
    return model, args


MODELS = {"gpt2": lambda: make_gpt2_stack(n_layers=2), "llama": lambda: make_llama_block(), "hf-llama": _hf_llama,
          "llama-8-heads": lambda: make_llama_block(n_heads=8, n_kv_heads=4)}  # 4 key-value heads: tp=4 fits
KEYWORDS = {"hf-llama": {"use_cache": False}}


def _imported(name: str):
    model, args = MODELS[name]()
    imported = import_module(model, tuple(args), KEYWORDS.get(name), None)
    graph = run_pipeline(imported.graph, "canonicalize")
    weights = {k: v.detach().numpy() for k, v in imported.weights.items()}
    return model, args, graph, weights


@pytest.mark.parametrize("name, tp", [("gpt2", 2), ("gpt2", 4), ("llama", 2), ("hf-llama", 2), ("llama-8-heads", 4)])
def test_the_simulated_group_equals_the_whole_model(name: str, tp: int) -> None:
    _, args, graph, weights = _imported(name)
    inputs = [a.numpy() for a in args]
    want = interpret(graph, inputs, {p.key: weights[p.key] for p in graph.params})[0]
    sharded = run_pipeline(graph, f"shard{{tp={tp}}}")
    assert print_graph(parse(print_graph(sharded))) == print_graph(sharded)  # shard(...) specs print and parse
    layers = 1 if name.startswith("llama") else 2
    assert print_graph(sharded).count("all_reduce(") == 2 * layers  # one per attention and MLP sublayer
    ranks = [{p.key: p.shard.take(weights[p.key], r) if p.shard else weights[p.key] for p in sharded.params}
             for r in range(tp)]
    for out in interpret_group(sharded, [inputs] * tp, ranks):
        np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)
    for p in sharded.params:  # each rank holds 1/tp of every split weight
        if p.shard is not None:
            assert p.value.type.shape[p.shard.dim] * tp == weights[p.key].shape[p.shard.dim]


def test_a_fused_query_key_value_weight_is_cut_in_three_blocks() -> None:
    _, _, graph, _ = _imported("gpt2")
    sharded = run_pipeline(graph, "shard{tp=2}")
    cuts = {p.key: p.shard for p in sharded.params if p.shard}
    assert cuts["h.0.attn.c_attn.weight"] == lamina.ir.core.Shard(0, 2, 3)
    assert "MB of weights per rank (" in sharded.history[-1]
    assert cuts["h.0.attn.c_proj.weight"] == lamina.ir.core.Shard(1, 2, 1)
    assert cuts["h.0.mlp.c_fc.bias"] == lamina.ir.core.Shard(0, 2, 1)
    assert "h.0.attn.c_proj.bias" not in cuts and "wte.weight" not in cuts  # added after the sum; replicated


def test_shard_errors_name_the_op_and_the_option() -> None:
    _, _, graph, _ = _imported("llama")
    with pytest.raises(ShardError, match=r"shard\{tp=4\}: reshape at self_attn has 2 along the split axis, which "
                                         "tp=4 does not divide"):
        run_pipeline(graph, "shard{tp=4}")
    with pytest.raises(ShardError, match="tp=0 must be a positive number of ranks"):
        run_pipeline(graph, "shard{tp=0}")
    mlp = lamina.trace(torch.nn.Linear(4, 4), (torch.randn(2, 4),))
    with pytest.raises(ShardError, match="no residual layer stack"):
        run_pipeline(mlp, "shard{tp=2}")


def _compiled_rank(rank: int, world: int, name: str, overlap: str = "") -> np.ndarray:
    """This rank's output of model ``name``; without ``overlap``, lamina.distributed.compile adds the shard pass."""
    model, args = MODELS[name]()
    pipeline = f"canonicalize,shard{{tp={world}}},{overlap},fuse" if overlap else "canonicalize,fuse"
    compiled = lamina.distributed.compile(model, args, pipeline=pipeline, example_kwargs=KEYWORDS.get(name))
    with torch.no_grad():
        out = compiled(*args, **KEYWORDS.get(name, {}))
        return (out.logits if hasattr(out, "logits") else out).numpy()


def _single_process(name: str) -> np.ndarray:
    model, args = MODELS[name]()
    with torch.no_grad():
        out = lamina.compile(model, args, example_kwargs=KEYWORDS.get(name))(*args, **KEYWORDS.get(name, {}))
        return (out.logits if hasattr(out, "logits") else out).numpy()


@pytest.mark.parametrize("name, world", [("gpt2", 2), ("llama", 2), ("gpt2", 4), ("hf-llama", 2),
                                         ("llama-8-heads", 4)])
def test_gloo_ranks_equal_the_single_process_model(name: str, world: int) -> None:
    want = _single_process(name)
    for got in spawn(_compiled_rank, world, name, timeout_s=300):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _mismatched(rank: int, world: int) -> None:
    model, args = MODELS["gpt2"]()
    lamina.distributed.compile(model, args, pipeline="canonicalize,fuse" if rank == 0 else "canonicalize,wrap")


def _wrong_tp(rank: int, world: int) -> None:
    model, args = MODELS["gpt2"]()
    lamina.distributed.compile(model, args, tp=4)


def test_mismatched_pipelines_and_a_wrong_tp_are_clear_errors() -> None:
    with pytest.raises(DistributedError, match="the ranks compile different pipelines"):
        spawn(_mismatched, 2, timeout_s=120)
    with pytest.raises(DistributedError, match="tp=4 but the process group has 2 ranks"):
        spawn(_wrong_tp, 2, timeout_s=120)


def test_kv_caches_are_split_by_heads_in_the_simulated_group() -> None:
    """CharGPT's prefill returns, and its decode reads, each rank's heads of the stacked keys and values."""
    from lamina.models.char_gpt import Decode, Prefill

    model, prompt = _char_gpt()
    with torch.no_grad():
        _, keys, values = Prefill(model)(prompt)
    for module, args in ((Prefill(model), (prompt,)), (Decode(model), (prompt[:, :1], keys, values))):
        imported = import_module(module, args, None, None)
        graph = run_pipeline(imported.graph, "canonicalize")
        weights = {k: v.detach().numpy() for k, v in imported.weights.items()}
        inputs = [a.numpy() for a in args]
        want = interpret(graph, inputs, {p.key: weights[p.key] for p in graph.params})
        sharded = run_pipeline(graph, "shard{tp=2}")
        assert "gets its part of outputs 1 (dim 2), 2 (dim 2)" in sharded.history[-1]
        ranks = [{p.key: p.shard.take(weights[p.key], r) if p.shard else weights[p.key] for p in sharded.params}
                 for r in range(2)]
        per_rank = [[x if x.ndim != 5 else np.split(x, 2, axis=2)[r] for x in inputs] for r in range(2)]
        out = interpret_group(sharded, per_rank, ranks)
        for rank in range(2):
            np.testing.assert_allclose(out[rank][0], want[0], rtol=1e-5, atol=1e-5)
            for i in (1, 2):
                np.testing.assert_allclose(out[rank][i], np.split(want[i], 2, axis=2)[rank], rtol=1e-5, atol=1e-5)


def _char_gpt():
    from lamina.models.char_gpt import CharGPT

    torch.manual_seed(0)
    model = CharGPT(96, 64, 4, 3, max_len=64).eval()
    return model, torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(3))


def _greedy_rank(rank: int, world: int) -> list[int]:
    from torch.export import Dim

    from lamina.models.char_gpt import Decode, Prefill, greedy

    model, prompt = _char_gpt()
    with torch.no_grad():
        _, keys, values = Prefill(model)(prompt)
    past = Dim("past")
    prefill = lamina.distributed.compile(Prefill(model), (prompt,), dynamic_shapes=({1: Dim("tokens")},))
    decode = lamina.distributed.compile(Decode(model), (prompt[:, :1], keys, values),
                                        dynamic_shapes=(None, {3: past}, {3: past}))
    with torch.no_grad():
        return greedy(prefill, decode, prompt, 12)[0].tolist()  # the cache: this rank's heads


def test_decoding_with_split_kv_caches_is_token_identical_to_one_rank() -> None:
    from lamina.models.char_gpt import Decode, Prefill, greedy

    model, prompt = _char_gpt()
    with torch.no_grad():
        want = greedy(Prefill(model), Decode(model), prompt, 12)[0].tolist()
    assert spawn(_greedy_rank, 2, timeout_s=300) == [want, want]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("overlap", ["overlap{chunks=4}", "overlap{split=2}"])
def test_overlapped_collectives_equal_the_whole_model(name: str, overlap: str) -> None:
    """Started early and waited for late, the all-reduces give the unsplit model's outputs; the schedule puts
    compute between every start and its wait."""
    _, args, graph, weights = _imported(name)
    inputs = [a.numpy() for a in args]
    want = interpret(graph, inputs, {p.key: weights[p.key] for p in graph.params})[0]
    sharded = run_pipeline(graph, "shard{tp=2}")
    done = run_pipeline(sharded, overlap)
    assert not any(op.name == "all_reduce" for op in done.ops)
    waits, exposed = _waits(done)
    reduces = sum(op.name == "all_reduce" for op in sharded.ops)
    assert waits in (2 * reduces, 4 * reduces) and exposed <= reduces  # at most the last piece of each
    ranks = [{p.key: p.shard.take(weights[p.key], r) if p.shard else weights[p.key] for p in done.params}
             for r in range(2)]
    for out in interpret_group(done, [inputs] * 2, ranks):
        np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)


def _waits(graph) -> tuple[int, int]:
    """How many waits ``graph`` has, and how many of them follow their start with no compute in between."""
    position = {id(r): i for i, op in enumerate(graph.ops) for r in op.results}
    spans = [(position[id(op.operands[0])], i) for i, op in enumerate(graph.ops) if op.name == "wait"]
    exposed = [s for s in spans if all(o.name == "wait" or o.name.endswith("_start") for o in graph.ops[s[0] + 1:s[1]])]
    return len(spans), len(exposed)


def test_overlap_errors_name_the_option() -> None:
    from lamina.passes.overlap import OverlapError

    _, _, graph, _ = _imported("gpt2")
    with pytest.raises(OverlapError, match="no all_reduce to overlap; run shard"):
        run_pipeline(graph, "overlap{chunks=2}")
    with pytest.raises(OverlapError, match="do not split into 3 equal chunks"):
        run_pipeline(graph, "shard{tp=2},overlap{chunks=3}")
    with pytest.raises(OverlapError, match="give chunks=C .*split=S .*or norm=1"):
        run_pipeline(graph, "overlap")
    with pytest.raises(OverlapError, match="split=1 must be at least 2"):
        run_pipeline(graph, "shard{tp=2},overlap{split=1}")
    one = import_module(make_gpt2_stack(n_layers=2, batch=1)[0], (torch.randint(0, 128, (1, 16)),), None, None)
    with pytest.raises(OverlapError, match=r"needs a static batch \(its dim 0\) that 2 divides"):
        run_pipeline(one.graph, "canonicalize,shard{tp=2},overlap{split=2}")
    with pytest.raises(OverlapError, match="that 3 divides"):
        run_pipeline(graph, "shard{tp=2},overlap{split=3}")


def test_four_pieces_of_the_batch_equal_the_whole_model() -> None:
    """overlap{split=4,norm=1}: each piece's chain of collectives (reduce-scatter, norm, all-gather) has three
    other pieces' compute to hide behind; the numbers are the unsplit model's."""
    model, (ids,) = make_gpt2_stack(n_layers=2, batch=4)
    imported = import_module(model, (ids,), None, None)
    graph = run_pipeline(imported.graph, "canonicalize")
    weights = {k: v.detach().numpy() for k, v in imported.weights.items()}
    want = interpret(graph, [ids.numpy()], weights)[0]
    done = run_pipeline(graph, "shard{tp=2},overlap{split=4,norm=1}")
    names = [op.name for op in done.ops]
    assert names.count("reduce_scatter_start") == names.count("all_gather_start") == 4 * 4  # 4 sublayers
    assert _waits(done) == (2 * 4 * 4, 0)
    ranks = [{p.key: p.shard.take(weights[p.key], r) if p.shard else weights[p.key] for p in done.params}
             for r in range(2)]
    for out in interpret_group(done, [[ids.numpy()]] * 2, ranks):
        np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("split", [False, True])
def test_the_sequence_parallel_stream_equals_the_whole_model(name: str, split: bool) -> None:
    """overlap{norm=1}: each all-reduce a reduce-scatter, norms on the token shard, one all-gather per column
    input; with split=2 too, each half's collectives started, and waited for while the other half computes."""
    _, args, graph, weights = _imported(name)
    inputs = [a.numpy() for a in args]
    want = interpret(graph, inputs, {p.key: weights[p.key] for p in graph.params})[0]
    sharded = run_pipeline(graph, "shard{tp=2}")
    done = run_pipeline(sharded, "overlap{norm=1,split=2}" if split else "overlap{norm=1}")
    names = [op.name for op in done.ops]
    reduces = sum(op.name == "all_reduce" for op in sharded.ops)
    assert "all_reduce" not in names and names.count("rank_slice") == 1
    if split:  # per sublayer and half: a started reduce-scatter and all-gather, with compute before each wait
        assert names.count("reduce_scatter_start") == names.count("all_gather_start") == 2 * reduces
        assert names.count("all_gather") == 1 and "reduce_scatter" not in names  # the end's gather
        assert _waits(done) == (4 * reduces, 0)  # the other half computes under every collective
    else:
        assert names.count("reduce_scatter") == reduces
        assert names.count("all_gather") == reduces + 1  # per sublayer, and the end
    ranks = [{p.key: p.shard.take(weights[p.key], r) if p.shard else weights[p.key] for p in done.params}
             for r in range(2)]
    for out in interpret_group(done, [inputs] * 2, ranks):
        np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(lamina.LaminaError, match="chunks=C goes alone"):
        run_pipeline(sharded, "overlap{norm=1,chunks=2}")


OVERLAPS = ["overlap{chunks=4}", "overlap{split=2}", "overlap{norm=1}", "overlap{split=2,norm=1}"]


@pytest.mark.parametrize("name, world, overlap", [(name, 2, overlap) for name in ("gpt2", "llama", "hf-llama")
                                                  for overlap in OVERLAPS]
                         + [("gpt2", 4, "overlap{chunks=4}"), ("gpt2", 4, "overlap{split=2,norm=1}")])
def test_gloo_ranks_with_overlap_equal_the_single_process_model(name: str, world: int, overlap: str) -> None:
    want = _single_process(name)
    for got in spawn(_compiled_rank, world, name, overlap, timeout_s=300):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _profiled_rank(rank: int, world: int, overlap: str, gbps: float, out_dir: str) -> tuple[float, float, float]:
    from lamina.runtime.timeline import plot, write_chrome_trace

    model, args = MODELS["gpt2"]()
    pipeline = "canonicalize,shard{tp=2}," + (f"{overlap}," if overlap else "") + "fuse"
    compiled = lamina.distributed.compile(model, args, pipeline=pipeline)
    compiled.simulate_link(gbps)
    with torch.no_grad():
        compiled(*args)
        timeline = compiled.profile(*args)
        again = compiled(*args).numpy()  # plans without timing again, the same numbers
    import torch.distributed as dist

    timelines = [None] * world
    dist.all_gather_object(timelines, timeline)
    if rank == 0 and overlap:
        write_chrome_trace(timelines, f"{out_dir}/trace.json")
        plot(timelines, f"{out_dir}/timeline.png", "gpt2 stack, tp=2")
    return timeline.exposed_ms, timeline.overlapped_ms, float(np.abs(again).max())


def test_the_timeline_shows_compute_while_collectives_are_in_flight(tmp_path) -> None:
    """Blocking all-reduces leave nothing in flight behind compute; started ones have compute running under
    them (how much it hides depends on the sizes: benchmarks/overlap.py). The trace and the PNG are written."""
    import json

    blocking = spawn(_profiled_rank, 2, "", 0.02, str(tmp_path), timeout_s=300)
    split = spawn(_profiled_rank, 2, "overlap{split=2}", 0.02, str(tmp_path), timeout_s=300)
    for (exposed, overlapped, _), (_, hidden, _) in zip(blocking, split):
        assert exposed > 4 * 0.4 and overlapped == 0  # 8 KB all-reduces at 0.02 GB/s: at least 0.4 ms each
        assert hidden > 0
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert {e.get("cat") for e in trace} >= {"compute", "wait", "in flight"}
    assert (tmp_path / "timeline.png").stat().st_size > 1000


def _torch_compiled_rank(rank: int, world: int) -> np.ndarray:
    model, args = MODELS["gpt2"]()
    fast = torch.compile(model, backend="lamina", options={"tp": world})
    with torch.no_grad():
        return fast(*args).numpy()


def test_torch_compile_with_tp_equals_the_single_process_model() -> None:
    model, args = MODELS["gpt2"]()
    with torch.no_grad():
        want = model(*args).numpy()
    for got in spawn(_torch_compiled_rank, 2, timeout_s=300):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_sharded_pipeline_outside_a_process_group_is_a_clear_error() -> None:
    model, args = MODELS["gpt2"]()
    with pytest.raises(DistributedError, match="sharded for 2 ranks: run it in a torch.distributed process group"):
        lamina.compile(model, args, pipeline="canonicalize,shard{tp=2},fuse")
