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


def test_cache_dir_from_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LAMINA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "lamina"
