"""On-disk kernel cache: generated source keyed by content hash, written atomically, verified on load.

Each entry is ``<dir>/<key>.py`` whose first line holds the SHA-256 of the rest. A truncated
or edited entry fails the check and is rewritten; it is never imported. Numba keeps its
compiled artefacts beside the entry (``__pycache__``), keyed by Numba on the same file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

_TAG = "# lamina-kernel sha256="


def default_cache_dir() -> Path:
    """``$LAMINA_CACHE_DIR``, else ``$XDG_CACHE_HOME/lamina``, else ``~/.cache/lamina``."""
    if os.environ.get("LAMINA_CACHE_DIR"):
        return Path(os.environ["LAMINA_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lamina"


def content_key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass
class KernelCache:
    """Loads generated modules through the disk cache; counts hits, misses and repairs."""

    directory: Path = field(default_factory=default_cache_dir)
    hits: int = 0
    misses: int = 0
    repaired: int = 0

    def path_for(self, name: str) -> Path:
        return Path(self.directory) / "kernels" / f"{name}.py"

    def load(self, name: str, source: str) -> ModuleType:
        """Import ``source`` as module ``name`` via the cache (written if absent or corrupt)."""
        path = self.path_for(name)
        digest = content_key(source)
        state = self._check(path, digest)
        if state == "ok":
            self.hits += 1
        else:
            self.repaired += state == "corrupt"
            self.misses += 1
            self._write(path, f"{_TAG}{digest}\n{source}")
        spec = importlib.util.spec_from_file_location(f"lamina_kernel_{name}", path)
        assert spec is not None and spec.loader is not None
        existing = sys.modules.get(spec.name)
        if existing is not None and getattr(existing, "__file__", None) == str(path) and state == "ok":
            return existing
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # Numba's cached artefacts re-import their module by name
        spec.loader.exec_module(module)
        return module

    @staticmethod
    def _check(path: Path, digest: str) -> str:
        try:
            text = path.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return "missing" if not path.exists() else "corrupt"
        head, _, body = text.partition("\n")
        if head != f"{_TAG}{digest}" or content_key(body) != digest:
            return "corrupt"
        return "ok"

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
