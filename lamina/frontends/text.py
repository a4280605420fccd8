"""IR text -> Graph: read a ``.lamina`` file (the printer's format)."""
from __future__ import annotations

from pathlib import Path

from ..ir.core import Graph
from ..ir.errors import LaminaError
from ..ir.parser import parse


def read_text(path: str | Path) -> str:
    """The IR text in ``path``; a clear error when it cannot be read or is not text."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise LaminaError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise LaminaError(f"{path} is not IR text: byte {e.start} is not UTF-8") from None


def read_graph(path: str | Path) -> Graph:
    """Parse the IR text in ``path`` (or the graph of a module saved there by ``lamina.save``); parse
    errors name the file, line and column."""
    from ..saved import is_saved, saved_graph_text

    if is_saved(path):
        return parse(saved_graph_text(path), filename=f"{path} (saved graph)")
    return parse(read_text(path), filename=str(path))
