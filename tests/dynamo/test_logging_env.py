"""LAMINA_LOG=fallback prints the fallback lines to stderr without any logging setup."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_lamina_log_env_prints_fallbacks() -> None:
    script = textwrap.dedent("""
        import torch
        class M(torch.nn.Module):
            def forward(self, x):
                return torch.cummax(x * 2.0, 1).values + 1.0
        x = torch.randn(3, 5)
        with torch.no_grad():
            got = torch.compile(M(), backend="lamina")(x)
        assert torch.allclose(got, M()(x))
    """)
    env = dict(os.environ, LAMINA_LOG="fallback")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("lamina lamina.fallback:")]
    assert len(lines) == 1 and "aten.cummax.default" in lines[0] and "runs in PyTorch" in lines[0]
