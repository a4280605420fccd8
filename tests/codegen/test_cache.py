"""Kernel cache: keyed by content, atomic, and a corrupted entry is rebuilt, never loaded."""
from __future__ import annotations

from lamina.codegen.cache import KernelCache, default_cache_dir

SOURCE = "def answer():\n    return 42\n"


def test_miss_then_hit(tmp_path) -> None:
    cache = KernelCache(tmp_path)
    assert cache.load("k_test", SOURCE).answer() == 42
    assert (cache.misses, cache.hits) == (1, 0)
    assert KernelCache(tmp_path).load("k_test", SOURCE).answer() == 42
    again = KernelCache(tmp_path)
    again.load("k_test", SOURCE)
    assert (again.misses, again.hits) == (0, 1)


def test_corrupted_or_truncated_entry_is_rebuilt(tmp_path) -> None:
    cache = KernelCache(tmp_path)
    cache.load("k_bad", SOURCE)
    path = cache.path_for("k_bad")
    for damage in (lambda t: t.replace("42", "43"), lambda t: t[: len(t) // 2], lambda t: ""):
        path.write_text(damage(path.read_text()))
        fresh = KernelCache(tmp_path)
        assert fresh.load("k_bad", SOURCE).answer() == 42
        assert fresh.repaired == 1 and fresh.hits == 0
    assert not list(path.parent.glob(".tmp-*"))  # no half-written files left behind


def test_an_intact_entry_of_another_source_is_replaced_quietly(tmp_path, caplog) -> None:
    """Another lamina version may have written a different source under the same name: that is a
    miss (rewritten, never imported), not damage to warn about."""
    KernelCache(tmp_path).load("k_versions", "def answer():\n    return 41\n")
    fresh = KernelCache(tmp_path)
    with caplog.at_level("WARNING", logger="lamina.cache"):
        assert fresh.load("k_versions", SOURCE).answer() == 42
    assert (fresh.misses, fresh.repaired) == (1, 0) and not caplog.records


def test_cache_dir_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LAMINA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "lamina"


def test_an_entry_replaced_by_a_directory_is_rebuilt(tmp_path) -> None:
    cache = KernelCache(tmp_path)
    cache.path_for("k_dir").mkdir(parents=True)
    assert cache.load("k_dir", SOURCE).answer() == 42 and cache.repaired == 1


def test_an_unwritable_cache_directory_falls_back_to_a_temporary_one(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    cache = KernelCache(blocker)
    with caplog.at_level("WARNING", logger="lamina.cache"):
        assert cache.load("k_ro", SOURCE).answer() == 42
    assert "not writable" in caplog.text and cache.directory != blocker


def test_a_vanished_cache_directory_is_made_again(tmp_path) -> None:
    import shutil

    cache = KernelCache(tmp_path / "c")
    cache.load("k_one", SOURCE)
    shutil.rmtree(tmp_path / "c")
    assert cache.load("k_two", SOURCE.replace("42", "7")).answer() == 7


COMPILE_MLP = """
import torch, lamina
from lamina.models import make_mlp
model, args = make_mlp()
with torch.no_grad():
    print(float((lamina.compile(model, args, kernel_language="numba")(*args) - model(*args)).abs().max()))
"""


def test_damaged_numba_artefacts_are_compiled_again_never_loaded(tmp_path) -> None:
    """A truncated .nbc or a junk .nbi used to fail every later compile with UnpicklingError."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "LAMINA_CACHE_DIR": str(tmp_path)}

    def run() -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-c", COMPILE_MLP], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert float(done.stdout.strip().splitlines()[-1]) <= 1e-5
        return done

    run()
    artefacts = sorted((tmp_path / "kernels" / "__pycache__").glob("*.nb*"))
    assert any(p.suffix == ".nbc" for p in artefacts) and any(p.suffix == ".nbi" for p in artefacts)
    for p in artefacts:
        if p.suffix == ".nbc":
            p.write_bytes(p.read_bytes()[:100])  # truncated
    assert "compiling it again" in run().stderr
    assert "compiling it again" not in run().stderr  # repaired: the next process loads the fresh artefacts
    for p in (tmp_path / "kernels" / "__pycache__").glob("*.nbi"):
        p.write_bytes(b"junk")
    assert "compiling it again" in run().stderr
