"""Kernel cache entries carried inside a saved module, so a fresh machine starts without compiling.

``bundle(cache)`` reads the entries a cache loaded: each generated source file and the compiled
artefacts Numba keeps beside it (``__pycache__/<name>.*``), as bytes, with the source's modification
time (Numba checks its index against the source file's stamp). ``install(cache, files)`` writes them
into another cache, only for entries that cache lacks. Nothing here can make a wrong kernel run:

- an entry's name carries the hash of its source, and the loader regenerates every kernel's source
  from the graph, so a bundled entry is used only when this machine generates exactly that source;
- the source's first line is its SHA-256 (checked by ``KernelCache`` before import);
- Numba keys each compiled artefact by the CPU name and features and by its own version, so an
  artefact from another CPU or Numba is a miss and the kernel is compiled again from its source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..log import logger
from .cache import KernelCache


@dataclass(frozen=True)
class BundledFile:
    """One file of a cache entry: its path under ``kernels/``, bytes and modification time (ns)."""

    path: str
    data: bytes
    mtime_ns: int


def bundle(cache: KernelCache) -> list[BundledFile]:
    """The files of every entry ``cache`` has loaded (sources and Numba's artefacts)."""
    files: list[BundledFile] = []
    for name, source in sorted(cache.loaded.items()):
        root = source.parent
        paths = [source, *sorted((root / "__pycache__").glob(f"{name}.*"))]
        for path in paths:
            try:
                files.append(BundledFile(str(path.relative_to(root)), path.read_bytes(), path.stat().st_mtime_ns))
            except OSError:  # an artefact Numba is rewriting: the loader compiles that kernel itself
                continue
    return files


def install(cache: KernelCache, files: list[BundledFile]) -> int:
    """Write the bundled entries ``cache`` does not have; returns how many entries were installed.
    An entry already present (or one that cannot be written) is left to the cache as it is."""
    root = Path(cache.directory) / "kernels"
    sources = [f for f in files if "/" not in f.path and f.path.endswith(".py")]
    installed = 0
    for source in sources:
        name = source.path[:-3]
        if (root / source.path).exists():
            continue
        own = [f for f in files if f.path.startswith(f"__pycache__/{name}.")]
        try:
            for f in (*own, source):  # the source last: until it exists no reader looks for the artefacts
                _write(root / f.path, f)
        except OSError as e:
            logger("cache").warning("could not install bundled kernel %s into %s (%s); it will be compiled",
                                    name, root, e)
            continue
        installed += 1
    return installed


def _write(path: Path, f: BundledFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_bytes(f.data)
    os.utime(tmp, ns=(f.mtime_ns, f.mtime_ns))
    os.replace(tmp, path)  # atomic, and the stamp Numba's index expects
