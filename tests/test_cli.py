"""The lamina command: dump in every format, demo, ops, and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from lamina.cli import main

ROOT = Path(__file__).resolve().parents[1]
GPT2 = f"{ROOT / 'examples' / 'gpt2.py'}:make"


def test_dump_text_shows_module_paths(capsys) -> None:
    assert main(["dump", GPT2]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph @forward(%idx: i64[2,16]) params(")
    assert "# h.3.attn.c_proj (aten.linear.default)" in out
    assert "attention(" in out


def test_dump_after_pass_with_history(capsys) -> None:
    assert main(["dump", GPT2, "--after", "canonicalize", "--history"]) == 0
    assert capsys.readouterr().out.startswith("// fold-norms: ")  # the history names every pass so far


def test_dump_mlir_parses_with_the_bindings(tmp_path) -> None:
    ir = pytest.importorskip("iree.compiler.ir")
    out = tmp_path / "gpt2.mlir"
    assert main(["dump", GPT2, "--format", "mlir", "-o", str(out)]) == 0
    with ir.Context():
        assert ir.Module.parse(out.read_text()).operation.verify()


def test_dump_dot(capsys) -> None:
    assert main(["dump", GPT2, "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('digraph "forward"') and "h.0.mlp.c_fc" in out and out.rstrip().endswith("}")


def test_dump_hf_model(capsys) -> None:
    assert main(["dump", f"{ROOT / 'examples' / 'hf_models.py'}:gpt2"]) == 0
    assert "transformer.h.1.mlp.c_fc" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["dump", "nope.py:make"], "no such file: nope.py"),
    (["dump", "examples/gpt2.py"], "expected FILE.py:FACTORY"),
    (["dump", f"{ROOT / 'examples' / 'gpt2.py'}:mak"], "has no function 'mak'; it defines make"),
    (["dump", GPT2, "--after", "fuse", "--pipeline", "canonicalize"], "--after fuse: that pass is not in the pipeline"),
    (["dump", GPT2, "--pipeline", "canonicalise"], "unknown pass 'canonicalise'"),
])
def test_dump_errors(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_ops_lists_the_registry(capsys) -> None:
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "attention" in out and "layer_norm" in out and "normalized_ndim: int" in out


def test_demo_prints_a_table_and_passes(capsys) -> None:
    assert main(["demo", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "gpt2-stack (4 layers)" in out and "all models match eager PyTorch" in out
    assert "MISMATCH" not in out


def test_dump_reads_ir_text_files(tmp_path, capsys) -> None:
    source = tmp_path / "g.lamina"
    source.write_text("graph @g(%x: f32[4]) {\n  %0 = identity(%x) : f32[4]\n  %1 = exp(%0) : f32[4]\n  return %1\n}\n")
    assert main(["dump", str(source), "--after", "canonicalize"]) == 0
    assert "identity" not in capsys.readouterr().out
    source.write_text("graph @g(%x: f32[4]) {\n  %0 = exp(%y) : f32[4]\n  return %0\n}\n")
    assert main(["dump", str(source)]) == 2
    assert f"{source}, line 2, column 12: %y is used but not defined" in capsys.readouterr().err


def test_dump_kernels_and_wrapper(capsys) -> None:
    assert main(["dump", GPT2, "--after", "fuse", "--kernels", "--wrapper"]) == 0
    out = capsys.readouterr().out
    assert "@numba.njit(parallel=" in out and "def k_add_layer_norm_" in out
    assert "# ---- wrapper:" in out and "def run(inputs, sizes):" in out and "arena" in out


def test_dump_kernels_without_after_shows_what_the_backend_runs(capsys) -> None:
    """No --after: the kernels of the whole default pipeline (fused), as the cpu backend compiles them."""
    assert main(["dump", GPT2, "--kernels"]) == 0
    out = capsys.readouterr().out
    assert "def k_add_layer_norm_" in out and "prefer_wide_vectors()" in out


def test_opt_runs_a_pipeline_on_split_input(tmp_path, capsys) -> None:
    path = tmp_path / "two.lamina"
    path.write_text("graph @a(%x: f32[4]) {\n  %0 = identity(%x) : f32[4]\n  %1 = exp(%0) : f32[4]\n  return %1\n}\n"
                    "// -----\n"
                    "graph @b(%x: f32[4]) {\n  %0 = neg(%x) : f32[4]\n  return %0\n}\n")
    assert main(["opt", str(path), "-p", "canonicalize,fuse", "--split-input-file"]) == 0
    out = capsys.readouterr().out
    a, b = out.split("// -----\n")
    assert "identity" not in a and "fused(%x)" in a and "exp(" in a
    assert b.startswith("graph @b(") and "neg(" in b


def test_opt_errors_name_the_line_of_the_file(tmp_path, capsys) -> None:
    path = tmp_path / "bad.lamina"
    path.write_text("graph @a(%x: f32[4]) {\n  return %x\n}\n// -----\ngraph @b(%x: f32[4]) {\n  %0 = frob(%x) : f32[4]\n"
                    "  return %0\n}\n")
    assert main(["opt", str(path), "-p", "canonicalize", "--split-input-file"]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 6" in err and "frob" in err
    assert main(["opt", str(path), "-p", "canonicalise"]) == 2
    assert "unknown pass 'canonicalise'" in capsys.readouterr().err


def test_a_factory_needing_a_missing_package_names_the_extra(tmp_path, capsys) -> None:
    path = tmp_path / "needs.py"
    path.write_text("import transformers_not_here\n\ndef make():\n    pass\n")
    assert main(["dump", f"{path}:make"]) == 2
    assert "transformers_not_here, which is not installed: pip install transformers_not_here" in capsys.readouterr().err
    path.write_text("import iree.nothing_here\n\ndef make():\n    pass\n")
    assert main(["dump", f"{path}:make"]) == 2
    assert "pip install 'lamina[mlir]'" in capsys.readouterr().err


def test_binary_files_are_not_ir_text(tmp_path, capsys) -> None:
    path = tmp_path / "junk.lamina"
    path.write_bytes(bytes([0xC3, 0x28, 0x00, 0xFF]) * 64)
    for argv in (["opt", str(path), "-p", "fuse"], ["dump", str(path)]):
        assert main(argv) == 2
        assert "is not IR text: byte 0 is not UTF-8" in capsys.readouterr().err


def test_dump_after_quantize_reports_each_layer_and_still_parses(capsys, tmp_path) -> None:
    from lamina.ir import parse

    assert main(["dump", GPT2, "--pipeline", "canonicalize,quantize{bits=4,group=32}", "--after", "quantize"]) == 0
    text = capsys.readouterr().out
    assert 'quantize(%h.0.attn.c_attn.weight) {bits=4, group=32, scheme="sym", score=none}' in text
    assert "// quantization (cpu backend):" in text
    assert "//   h.0.mlp.c_fc: int4 g32 sym, " in text and "numba dequantize-in-the-loop kernel" in text
    parse(text)  # the report is comments
