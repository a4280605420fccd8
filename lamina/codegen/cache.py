"""On-disk kernel cache: generated source keyed by content hash, written atomically, verified on load.

Each entry is ``<dir>/kernels/<key>.py`` whose first line holds the SHA-256 of the rest. A
truncated or edited entry fails the check and is rewritten; it is never imported. An intact entry
holding another source under the same name (written by another lamina version, whose shared kernel
header differed) is rewritten too, without a warning. Numba keeps
its compiled artefacts beside the entry (``__pycache__/*.nbi, *.nbc``), checked by Numba
against the entry's file stamp; a damaged artefact (truncated, junk, unreadable) is dropped and
the kernel compiled again. When the cache directory cannot be written (read-only, not a
directory, vanished) the kernels go to a private temporary directory instead. Every such
repair is a warning on the ``lamina.cache`` logger; none is an error, and no damaged entry
is ever run.
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
from typing import Any

from ..log import logger

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
    loaded: dict[str, Path] = field(default_factory=dict)  # entry name -> file, every entry this cache loaded

    def path_for(self, name: str) -> Path:
        return Path(self.directory) / "kernels" / f"{name}.py"

    def load(self, name: str, source: str) -> ModuleType:
        """Import ``source`` as module ``name`` via the cache (written if absent or corrupt)."""
        digest = content_key(source)
        try:
            path, state = self._entry(name, source, digest)
        except OSError as e:  # the directory cannot be written: keep going in a private one
            logger("cache").warning("kernel cache %s is not writable (%s); using a temporary directory",
                                    self.directory, e)
            self.directory = Path(tempfile.mkdtemp(prefix="lamina-kernels-"))
            path, state = self._entry(name, source, digest)
        self.loaded[name] = path
        spec = importlib.util.spec_from_file_location(f"lamina_kernel_{name}", path)
        assert spec is not None and spec.loader is not None
        existing = sys.modules.get(spec.name)
        if existing is not None and getattr(existing, "__file__", None) == str(path) and state == "ok":
            return existing
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # Numba's cached artefacts re-import their module by name
        spec.loader.exec_module(module)
        guard_numba_caches(module)
        return module

    def _entry(self, name: str, source: str, digest: str) -> tuple[Path, str]:
        """The verified entry for ``source``, written first when missing or damaged."""
        path = self.path_for(name)
        state = self._check(path, digest)
        if state == "ok":
            self.hits += 1
        else:
            if state == "corrupt":
                self.repaired += 1
                logger("cache").warning("kernel cache entry %s was damaged; rebuilt", path)
            self.misses += 1
            self._write(path, f"{_TAG}{digest}\n{source}")
        return path, state

    @staticmethod
    def _check(path: Path, digest: str) -> str:
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        except (OSError, UnicodeDecodeError):  # unreadable, a directory, binary junk
            return "corrupt"
        head, _, body = text.partition("\n")
        if head == f"{_TAG}{digest}" and content_key(body) == digest:
            return "ok"
        if head == f"{_TAG}{content_key(body)}":  # intact, but another source under this name (an older lamina)
            return "stale"
        return "corrupt"

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():  # something else took the entry's name
            import shutil

            shutil.rmtree(path)
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


def guard_numba_caches(module: ModuleType) -> None:
    """Make each cached Numba function of ``module`` treat a damaged or unwritable artefact as a
    cache miss: Numba raises from deep inside its first call otherwise (a truncated ``.nbc`` is an
    UnpicklingError on every later compile until someone deletes it)."""
    for value in vars(module).values():
        cache = getattr(value, "_cache", None)
        if cache is None or not hasattr(cache, "load_overload") or getattr(cache, "_lamina_guarded", False):
            continue
        cache.load_overload = _guarded_load(cache, cache.load_overload)
        cache.save_overload = _guarded_save(cache, cache.save_overload)
        cache._lamina_guarded = True


def _guarded_load(cache: Any, load: Any) -> Any:
    def load_overload(sig: Any, target_context: Any) -> Any:
        try:
            return load(sig, target_context)
        except Exception as e:  # noqa: BLE001 - any damage is a miss: compile again
            logger("cache").warning("compiled kernel in %s is unreadable (%s: %s); compiling it again",
                                    getattr(cache, "cache_path", "the kernel cache"), type(e).__name__, e)
            try:
                cache.flush()  # an empty index: the fresh compile is saved over the damaged files
            except Exception:  # noqa: BLE001 - a read-only cache stays as it is
                pass
            return None

    return load_overload


def _guarded_save(cache: Any, save: Any) -> Any:
    def save_overload(sig: Any, data: Any) -> None:
        try:
            save(sig, data)
        except Exception as e:  # noqa: BLE001 - the kernel works; only the next process compiles again
            logger("cache").warning("could not save a compiled kernel to %s (%s: %s)",
                                    getattr(cache, "cache_path", "the kernel cache"), type(e).__name__, e)

    return save_overload
