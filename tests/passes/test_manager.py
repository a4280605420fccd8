"""Pass manager: pipeline strings, verification after each pass, dumps and timings."""
from __future__ import annotations

import pytest

import lamina
from lamina.ir import Graph, VerifyError, parse
from lamina.ir.core import Op, Value
from lamina.ir.errors import LaminaError
from lamina.passes.manager import PassInfo, PipelineError, parse_pipeline, run_steps

TEXT = """graph @g(%x: f32[4]) {
  %0 = identity(%x) : f32[4]
  %1 = exp(%0) : f32[4]
  return %1
}
"""


def test_parse_pipeline_and_errors() -> None:
    assert [str(s) for s in parse_pipeline("canonicalize, canonicalize")] == ["canonicalize", "canonicalize"]
    assert parse_pipeline("") == []
    with pytest.raises(PipelineError, match="unknown pass 'fusee'; known passes: canonicalize, channels-last, fold-norms, fuse"):
        parse_pipeline("canonicalize,fusee")
    with pytest.raises(PipelineError, match="takes no options"):
        parse_pipeline("canonicalize{x=1}")
    with pytest.raises(PipelineError, match="expected ','"):
        parse_pipeline("canonicalize canonicalize")


def test_options_are_parsed_into_the_pass_dataclass() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Opts:
        bits: int = 8
        greedy: bool = False

    seen = {}

    def fake(graph: Graph, options: Opts) -> Graph:
        seen["options"] = options
        return graph

    passes = {"fake": PassInfo("fake", fake, Opts)}
    steps = parse_pipeline("fake{bits=4,greedy=true}", passes)
    run_steps(parse(TEXT), steps)
    assert seen["options"] == Opts(bits=4, greedy=True)
    with pytest.raises(PipelineError, match="has no option 'bitz'; it takes bits, greedy"):
        parse_pipeline("fake{bitz=4}", passes)
    with pytest.raises(PipelineError, match="option bits of fake must be int, got 'four'"):
        parse_pipeline("fake{bits=four}", passes)
    with pytest.raises(PipelineError, match="option greedy of fake must be bool, got 2"):
        parse_pipeline("fake{greedy=2}", passes)


def test_invalid_pass_output_is_caught_and_named() -> None:
    def broken(graph: Graph) -> Graph:
        op = graph.ops[0]
        bad = Op("exp", op.operands, (Value(op.results[0].type.with_shape((5,))),))
        return graph.replace(ops=(bad,) + graph.ops[1:])

    steps = parse_pipeline("broken", {"broken": PassInfo("broken", broken)})
    with pytest.raises(LaminaError, match="pass broken produced invalid IR") as info:
        run_steps(parse(TEXT), steps)
    assert isinstance(info.value.__cause__, VerifyError)


def test_dumps_and_timings(tmp_path, capsys) -> None:
    result = run_steps(parse(TEXT), parse_pipeline("canonicalize"), dump_dir=tmp_path,
                       dump_before=["canonicalize"], dump_after=["canonicalize"])
    printed = capsys.readouterr().out
    assert "IR before canonicalize" in printed and "IR after canonicalize" in printed
    assert [t.name for t in result.timings] == ["canonicalize"]
    assert result.timings[0].ops_before == 2 and result.timings[0].ops_after == 1
    assert (tmp_path / "01-canonicalize.lamina").read_text().startswith("// canonicalize: ")
    assert lamina.run_pipeline(parse(TEXT), "canonicalize").history[0].startswith("canonicalize: ")
