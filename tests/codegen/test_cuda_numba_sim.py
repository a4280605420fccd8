"""Numba-CUDA kernels for an MLP, a GPT-2 block and a Newton-expanded GPT-2 stack run under the CUDA simulator and match the interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import numpy as np, lamina
    from lamina.frontends.fx import import_module
    from lamina.ir import interpret
    from lamina.models import make_gpt2_stack, make_mlp
    from lamina.runtime.simulate import run_simulated
    cases = {"mlp": make_mlp(batch=2, sizes=(16, 32, 8)),
             "gpt2_block": make_gpt2_stack(batch=1, seq=4, d_model=32, n_heads=2, n_layers=1, vocab=16),
             "gpt2_newton": make_gpt2_stack(batch=1, seq=4, d_model=32, n_heads=2, n_layers=3, vocab=16)}
    newton = "canonicalize,newton{iters=2,chunk=3,granularity=sublayer},newton-expand,"
    for name, (model, args) in cases.items():
        imported = import_module(model, args)
        graph = lamina.run_pipeline(imported.graph, (newton if "newton" in name else "canonicalize,") + "fuse")
        assert ("newton" in name) == any("layer_scan" in str(op.regions[0].ops) for op in graph.ops if op.name == "fused")
        weights = {k: v.numpy() for k, v in imported.weights.items()}
        inputs = [a.numpy() for a in args]
        (want,) = interpret(graph, inputs, weights)
        (got,) = run_simulated(graph, inputs, weights)
        err = float(np.abs(got - want).max() / np.abs(want).max())
        kernels = sum(op.name == "fused" for op in graph.ops)
        print(name, kernels, err)
        assert err <= 1e-5, (name, err)
    # checked indices and divisions: same numbers as the interpreter, and a bad index is an error
    from lamina.errors import IndexOutOfRangeError
    from lamina.passes.fusion import fuse
    from tests.codegen.test_cuda_c import CHECKED_GRAPH
    graph = fuse(lamina.parse(CHECKED_GRAPH))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((10, 8), dtype=np.float32), rng.integers(0, 4, (4, 3)),
              rng.standard_normal((5, 8), dtype=np.float32), rng.integers(0, 5, (5, 8)),
              rng.integers(-9, 9, (4, 8)).astype(np.int32), rng.integers(1, 4, (4, 8)).astype(np.int32),
              rng.random((4, 8), dtype=np.float32) + 0.5]
    for got, want in zip(run_simulated(graph, inputs, {}), interpret(graph, inputs)):
        assert np.allclose(got, want, rtol=1e-6, equal_nan=True)
    inputs[1][2, 1] = 10
    try:
        run_simulated(graph, inputs, {})
        raise AssertionError("no error for index 10")
    except IndexOutOfRangeError as e:
        assert "index 10" in str(e)
    print("checked 1 0")
""")


def test_numba_cuda_kernels_under_the_simulator(tmp_path) -> None:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "LAMINA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert set(lines) == {"mlp", "gpt2_block", "gpt2_newton", "checked"}
    assert all(int(v.split()[0]) >= 2 for k, v in lines.items() if k != "checked")  # several kernels each
