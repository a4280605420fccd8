"""C kernels compiled into one shared library and called through ctypes (no Numba, no JIT).

``build_library(functions)`` compiles the C of every kernel (``codegen/cpu_c.py``) with the
system's C compiler (``$CC``, else ``cc``) and OpenMP, in parallel parts linked into one shared
object, and returns its bytes; a build is kept in the cache keyed by the compiler, its flags and the
sources, so compiling the same kernels again costs nothing. ``NativeLibrary.load(data, functions)``
writes the bytes under the kernel cache (named by their SHA-256, so an existing file is reused only
when its bytes match) and binds each kernel as a ctypes function. The OpenMP runtime is torch's own
``libgomp.so.1`` once torch is imported (the loader resolves the library's dependency to the already
loaded one): one thread pool for both.

This module imports nothing of lamina's IR, SymPy or Numba: a saved module's fast load
(``lamina/saved.py``, ``runtime/frozen.py``) uses it.
"""
from __future__ import annotations

import ctypes
import functools
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
        self._as_parameter_ = tensor.data_ptr()  # an int: every kernel's argtypes make it a c_void_p

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
    flags = ["-O3", "-fPIC", "-fopenmp", "-fno-math-errno", "-ffp-contract=fast"]
    cc = compiler()
    if cc is not None and "clang" not in _compiler_version(cc):
        # gcc vectorizes a loop whose reads may alias its writes behind run-time overlap tests, at most
        # 10 by default: an NHWC 3x3 window with its batch norm reads 22 rows, and the OpenMP body
        # (where the loops run) does not see the parameters' restrict
        flags.append("--param=vect-max-version-for-alias-checks=64")
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-march=native", "-mprefer-vector-width=512"]
    elif platform.machine() in ("aarch64", "arm64"):
        flags += ["-mcpu=native"]
    return flags


@functools.lru_cache(maxsize=4)
def _compiler_version(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.stdout else cc


def build_library(functions: Sequence[NativeFunction], prelude: str, workers: int | None = None) -> bytes:
    """The shared library of ``functions`` (their sources after ``prelude``), as bytes: from the build
    cache when this compiler, its flags and these sources built it before, else compiled now in up to
    ``workers`` parallel parts (default: one per core, at most 8) and linked."""
    cc = compiler()
    if cc is None:
        raise NativeBuildError("no C compiler found (set CC, or install gcc or clang)")
    flags = compile_flags()
    digest = hashlib.sha256("\0".join([_compiler_version(cc), *flags, prelude, *(f.source for f in functions)])
                            .encode()).hexdigest()
    cached = _cached_build(digest)
    if cached is not None:
        return cached
    parts = _balanced(functions, workers or min(os.cpu_count() or 1, 8))
    with tempfile.TemporaryDirectory(prefix="lamina-native-") as tmp:
        running = []
        for i, part in enumerate(parts):
            source, obj = Path(tmp) / f"kernels{i}.c", Path(tmp) / f"kernels{i}.o"
            source.write_text(prelude + "\n" + "\n".join(f.source for f in part))
            running.append((obj, subprocess.Popen([cc, *flags, "-c", "-o", str(obj), str(source)],
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        failures = [err for _, p in running for _, err in [p.communicate()] if p.returncode != 0]
        if failures:
            raise NativeBuildError(f"{cc} failed to compile kernels:\n{failures[0][-4000:]}")
        library = Path(tmp) / "kernels.so"
        done = subprocess.run([cc, "-shared", "-fopenmp", "-o", str(library), *(str(o) for o, _ in running), "-lm"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise NativeBuildError(f"{cc} failed to link {len(functions)} kernels:\n{done.stderr[-4000:]}")
        data = library.read_bytes()
    _store_build(digest, data)
    return data


def _balanced(functions: Sequence[NativeFunction], n: int) -> list[list[NativeFunction]]:
    """``functions`` in at most ``n`` non-empty parts of about equal source length (longest first)."""
    parts: list[list[NativeFunction]] = [[] for _ in range(max(1, min(n, len(functions))))]
    sizes = [0] * len(parts)
    for f in sorted(functions, key=lambda f: -len(f.source)):
        i = sizes.index(min(sizes))
        parts[i].append(f)
        sizes[i] += len(f.source)
    return parts


def _cached_build(digest: str) -> bytes | None:
    """A library built before from the same sources, when its bytes still match their recorded hash."""
    path = library_dir() / "builds" / f"{digest}.so"
    try:
        data = path.read_bytes()
        recorded = path.with_suffix(".sha256").read_text().strip()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == recorded else None


def _store_build(digest: str, data: bytes) -> None:
    """Keep a built library for the next build of the same sources (nothing when the cache is not writable)."""
    directory = library_dir() / "builds"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for suffix, content in ((".so", data), (".sha256", hashlib.sha256(data).hexdigest().encode())):
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, directory / f"{digest}{suffix}")  # the hash last: until then the entry is a miss
    except OSError:
        pass


def _cpuinfo(*fields: str) -> str:
    """The value of the first of ``fields`` in Linux's ``/proc/cpuinfo`` (its first CPU); empty where it
    cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(fields):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_features() -> list[str]:
    """This CPU's feature flags, sorted; empty where they cannot be read. A library compiled for
    features this CPU lacks is not loaded (it could stop on an illegal instruction)."""
    return sorted(set(_cpuinfo("flags", "Features").split()))


def cpu_vendor() -> str:
    """This CPU's vendor (``GenuineIntel``, ``AuthenticAMD``); empty where it cannot be read."""
    return _cpuinfo("vendor_id")


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


def compiled_function(function: NativeFunction, prelude: str) -> Any:
    """``function`` alone in a library (its source after ``prelude``), built or taken from the build cache,
    as a ctypes function: one kernel to call directly, as tests and benchmarks do."""
    return NativeLibrary.load(build_library([function], prelude), [function])[function.name]


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
