"""The README's worked example is the code: its snippets appear verbatim in the files it names."""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

import lamina

ROOT = Path(__file__).parent.parent


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_adding_an_op_snippets_are_in_the_source() -> None:
    section = _section("Adding an op")
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    elementwise = (ROOT / "lamina/ir/ops/elementwise.py").read_text()
    aten = (ROOT / "lamina/frontends/aten.py").read_text()
    assert blocks[0] in elementwise and blocks[1] in elementwise
    assert blocks[2].strip() in aten


def test_the_worked_example_op_compiles_on_the_kernel_backend() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Hardswish()).eval()
    x = torch.randn(4, 8) * 4
    compiled = lamina.compile(model, (x,), fallback=False, poison=True)
    assert any(op.name == "hardswish" for op in compiled.graph.walk())
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), F.hardswish(model[0](x)), rtol=1e-5, atol=1e-6)


def test_the_readme_names_only_files_that_exist() -> None:
    text = (ROOT / "README.md").read_text()
    for path in set(re.findall(r"`((?:lamina|tests|benchmarks|examples)/[\w/.-]+\.(?:py|lamina|md))`", text)):
        assert (ROOT / path).exists(), path
    assert "../shared" not in text
