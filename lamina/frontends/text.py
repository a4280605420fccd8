"""IR text -> Graph: read a ``.lamina`` file (the printer's format)."""
from __future__ import annotations

from pathlib import Path

from ..ir.core import Graph
from ..ir.errors import LaminaError
from ..ir.parser import parse


def read_graph(path: str | Path) -> Graph:
    """Parse the IR text in ``path``; parse errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise LaminaError(f"cannot read {path}: {e.strerror}") from None
    return parse(text, filename=str(path))
