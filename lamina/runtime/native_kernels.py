"""C kernels compiled into one shared library and called through ctypes (no Numba, no JIT).

``build_library(functions)`` compiles the C of every kernel (``codegen/cpu_c.py``) with the
system's C compiler (``$CC``, else ``cc``) and OpenMP into one shared object and returns its bytes;
``NativeLibrary.load(data, functions)`` writes them under the kernel cache (named by their SHA-256,
so an existing file is reused only when its bytes match) and binds each kernel as a ctypes
function. The OpenMP runtime is torch's own ``libgomp.so.1`` once torch is imported (the loader
resolves the library's dependency to the already loaded one): one thread pool for both.

This module imports nothing of lamina's IR, SymPy or Numba: a saved module's fast load
(``lamina/package.py``) uses it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch



class _Float32:
    """ctypes argument type of a float32 constant: takes NumPy's float32 too (``c_float`` does not)."""

    @staticmethod
    def from_param(value: Any) -> ctypes.c_float:
        return ctypes.c_float(float(value))


ARGUMENT_TYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int64, "f": _Float32, "d": ctypes.c_double}


class NativeBuildError(RuntimeError):
    """No C compiler, or it failed: the message has the compiler's own output."""


@dataclass(frozen=True)
class NativeFunction:
    """One kernel of a library: its C ``source``, exported ``name`` and argument kinds (``ARGUMENT_TYPES``
    keys: a buffer pointer, an int64 size, a float or double constant)."""

    name: str
    arguments: str
    source: str = ""


class Flat:
    """A tensor handed to a C kernel: ctypes passes its data pointer (``_as_parameter_``); the tensor
    is kept alive for as long as the view. Indexing reaches the tensor (error buffers are read so)."""

    __slots__ = ("tensor", "_as_parameter_")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self._as_parameter_ = ctypes.c_void_p(tensor.data_ptr())

    def __getitem__(self, index: Any) -> Any:
        return self.tensor[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self.tensor[index] = value


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH; None when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compile_flags() -> list[str]:
    """Optimized for this CPU (as Numba compiles for it), OpenMP, no errno from math functions."""
    flags = ["-O3", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-march=native", "-mprefer-vector-width=512"]
    elif platform.machine() in ("aarch64", "arm64"):
        flags += ["-mcpu=native"]
    return flags


def build_library(functions: Sequence[NativeFunction], prelude: str) -> bytes:
    """The shared library of ``functions`` (their sources after ``prelude``), as bytes."""
    cc = compiler()
    if cc is None:
        raise NativeBuildError("no C compiler found (set CC, or install gcc or clang)")
    with tempfile.TemporaryDirectory(prefix="lamina-native-") as tmp:
        source, library = Path(tmp) / "kernels.c", Path(tmp) / "kernels.so"
        source.write_text(prelude + "\n" + "\n".join(f.source for f in functions))
        done = subprocess.run([cc, *compile_flags(), "-o", str(library), str(source), "-lm"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise NativeBuildError(f"{cc} failed to compile {len(functions)} kernels:\n{done.stderr[-4000:]}")
        return library.read_bytes()


def cpu_features() -> list[str]:
    """This CPU's feature flags (Linux ``/proc/cpuinfo``), sorted; empty where they cannot be read.
    A library compiled for features this CPU lacks is not loaded (it could stop on an illegal instruction)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return sorted(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def library_dir() -> Path:
    """Where loaded libraries are kept: ``native/`` beside the kernel cache's ``kernels/``."""
    if os.environ.get("LAMINA_CACHE_DIR"):
        return Path(os.environ["LAMINA_CACHE_DIR"]) / "native"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lamina" / "native"


class NativeLibrary:
    """A loaded library's kernels, by name (``library[name]`` is a ctypes function)."""

    def __init__(self, path: Path, functions: Sequence[NativeFunction]) -> None:
        self.path = path
        self._dll = ctypes.CDLL(str(path))
        self.functions: dict[str, Any] = {}
        for f in functions:
            fn = getattr(self._dll, f.name)
            fn.argtypes = [ARGUMENT_TYPES[k] for k in f.arguments]
            fn.restype = None
            self.functions[f.name] = fn

    def __getitem__(self, name: str) -> Any:
        return self.functions[name]

    @classmethod
    def load(cls, data: bytes, functions: Sequence[NativeFunction]) -> "NativeLibrary":
        """Write ``data`` to the cache (kept when a file of that digest with those bytes exists) and load it."""
        digest = hashlib.sha256(data).hexdigest()
        path = _stored(data, digest)
        return cls(path, functions)


def _stored(data: bytes, digest: str) -> Path:
    for directory in (library_dir(), Path(tempfile.gettempdir()) / f"lamina-native-{os.getuid()}"):
        path = directory / f"{digest}.so"
        try:
            if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
                return path
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".so")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic: another process sees the old file or the whole new one
            return path
        except OSError:
            continue
    raise NativeBuildError("cannot write the kernel library to the cache or the temporary directory")


def argument_kinds(n_buffers: int, n_sizes: int, params: Mapping[str, str]) -> str:
    """``ARGUMENT_TYPES`` keys for a kernel with these buffers, sizes and lifted constants (C types)."""
    kind = {"int64_t": "i", "float": "f", "double": "d"}
    return "p" * n_buffers + "i" * n_sizes + "".join(kind[t] for t in params.values())
