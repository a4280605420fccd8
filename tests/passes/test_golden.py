"""Golden pass tests in FileCheck style: ``tests/passes/golden/*.lamina``.

Each file starts with ``// RUN: lamina opt %s -p PIPELINE --split-input-file | filecheck %s``; its
cases are separated by ``// -----`` and carry ``// CHECK...`` lines (the ``filecheck`` package, LLVM
FileCheck's Python clone). The runner runs ``lamina opt`` in-process, pipes its output to
``filecheck``, and also interprets every case before and after the pipeline on random inputs: the
pass must not change what the graph computes.
"""
from __future__ import annotations

import contextlib
import io
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lamina.cli import main, split_input
from lamina.ir import interpret, parse
from lamina.passes.manager import parse_pipeline, run_steps

GOLDEN = Path(__file__).parent / "golden"
FILES = sorted(GOLDEN.glob("*.lamina"))


def _run_line(path: Path) -> tuple[list[str], list[str]]:
    """(lamina opt arguments, filecheck arguments) of the file's RUN line, %s replaced by its path."""
    line = next(l for l in path.read_text().splitlines() if l.startswith("// RUN:"))
    opt, _, check = line.removeprefix("// RUN:").partition("|")
    opt_args, check_args = shlex.split(opt.replace("%s", str(path))), shlex.split(check.replace("%s", str(path)))
    assert opt_args[:2] == ["lamina", "opt"] and check_args[0] == "filecheck", line
    return opt_args[2:], check_args[1:]


def _filecheck(path: Path, opt_args: list[str]) -> subprocess.CompletedProcess:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["opt", *opt_args]) == 0
    _, check_args = _run_line(path)
    return subprocess.run([sys.executable, "-m", "filecheck", *check_args], input=out.getvalue(), text=True,
                          capture_output=True)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_filecheck(path: Path) -> None:
    opt_args, _ = _run_line(path)
    done = _filecheck(path, opt_args)
    assert done.returncode == 0, done.stderr + done.stdout


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pipeline_keeps_what_each_case_computes(path: Path) -> None:
    opt_args, _ = _run_line(path)
    steps = parse_pipeline(opt_args[opt_args.index("-p") + 1])
    rng = np.random.default_rng(0)
    for offset, text in split_input(path.read_text()):
        graph = parse(text)
        after = run_steps(graph, steps).graph
        inputs = [_random(v.type, rng) for v in graph.inputs]
        params = {p.key: _random(p.value.type, rng) for p in graph.params}
        for want, got in zip(interpret(graph, inputs, params), interpret(after, inputs, params)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{path.name}, line {offset + 1}")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_the_checks_fail_without_the_pass(path: Path) -> None:
    done = _filecheck(path, [str(path), "-p", "", "--split-input-file"])
    assert done.returncode != 0, f"{path.name} passes its checks with no pass run: they check nothing"


def _random(t, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(t.shape)
    if t.dtype.is_float:
        return rng.standard_normal(shape).astype(t.dtype.numpy)
    if t.dtype.is_int:
        return rng.integers(0, 4, shape).astype(t.dtype.numpy)
    return rng.random(shape) < 0.5
