"""A saved module carries its compiled kernels: a fresh process with an empty kernel cache loads it
and runs without compiling one, and a kernel in the file that this machine would not generate is
never run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import lamina
from lamina.cli import main as cli
from lamina.models import make_gpt2_stack
from lamina.saved import KERNELS, _checksum

LOAD_AND_RUN = """
import json, sys, time, torch
import lamina
path, inputs, want = sys.argv[1:4]
t = time.perf_counter()
m = lamina.load(path, compiled_kernels=sys.argv[4] == "1", frozen=False)  # the Numba kernels in the file
with torch.no_grad():
    out = m(torch.load(inputs))
seconds = time.perf_counter() - t
stats = [v.stats for name, mod in sys.modules.items() if name.startswith("lamina_kernel_")
         for v in vars(mod).values() if hasattr(v, "stats")]
print(json.dumps({"equal": bool(torch.equal(out, torch.load(want))), "seconds": seconds,
                  "hits": sum(sum(s.cache_hits.values()) for s in stats),
                  "misses": sum(sum(s.cache_misses.values()) for s in stats)}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A GPT-2 stack compiled in its own kernel cache and saved, with an input and its output. Its kernels are
    Numba's: under C kernels the library is carried whole, and the only Numba kernel a GPT-2 stack had there,
    attention's, is C now too."""
    root = tmp_path_factory.mktemp("warm")
    old = os.environ.get("LAMINA_CACHE_DIR")
    os.environ["LAMINA_CACHE_DIR"] = str(root / "saver-cache")
    try:
        model, (idx,) = make_gpt2_stack(batch=2, seq=16, d_model=64, n_layers=2, vocab=96)
        compiled = lamina.compile(model, (idx,), kernel_language="numba")  # what the file carries: Numba kernels
        with torch.no_grad():
            want = compiled(idx)
        lamina.save(compiled, root / "gpt2.lamina")
    finally:
        if old is None:
            del os.environ["LAMINA_CACHE_DIR"]
        else:
            os.environ["LAMINA_CACHE_DIR"] = old
    torch.save(idx, root / "idx.pt")
    torch.save(want, root / "want.pt")
    return root / "gpt2.lamina", root / "idx.pt", root / "want.pt"


def _load_in_fresh_process(path: Path, idx: Path, want: Path, cache: Path, compiled_kernels: bool = True) -> dict:
    # kernels compile in the process itself, so that Numba's counters there show each compile
    env = {**os.environ, "LAMINA_CACHE_DIR": str(cache), "LAMINA_COMPILE_WORKERS": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(path), str(idx), str(want),
                           "1" if compiled_kernels else "0"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_file_carries_every_kernel_the_module_runs(saved) -> None:
    path, _, _ = saved
    with safe_open(str(path), framework="pt") as f:
        names = [k[len(KERNELS):] for k in f.keys() if k.startswith(KERNELS)]
        mtimes = json.loads(f.metadata()["kernel_mtimes"])
    sources = [n for n in names if n.endswith(".py")]
    assert sources and set(mtimes) == set(names)
    for source in sources:  # each source with Numba's index and compiled code beside it
        stem = source[:-3]
        assert any(n.startswith(f"__pycache__/{stem}.") and n.endswith(".nbi") for n in names), stem
        assert any(n.startswith(f"__pycache__/{stem}.") and n.endswith(".nbc") for n in names), stem


def test_a_fresh_process_with_an_empty_cache_compiles_nothing(saved, tmp_path) -> None:
    path, idx, want = saved
    result = _load_in_fresh_process(path, idx, want, tmp_path / "empty-cache")
    assert result["equal"]
    assert result["hits"] > 0 and result["misses"] == 0, result


def test_without_compiled_kernels_every_kernel_is_compiled_from_the_graph(saved, tmp_path) -> None:
    path, idx, want = saved
    result = _load_in_fresh_process(path, idx, want, tmp_path / "empty-cache", compiled_kernels=False)
    assert result["equal"]
    assert result["hits"] == 0 and result["misses"] > 0, result


def test_a_bundled_kernel_the_graph_does_not_generate_is_never_run(saved, tmp_path) -> None:
    """A file whose kernel source was replaced (and its checksum recomputed, as an attacker could):
    the cache checks each entry against the source this machine generates, so the planted code is
    rewritten, not imported."""
    path, idx, want = saved
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    source = next(k for k in tensors if k.startswith(KERNELS) and k.endswith(".py"))
    planted = tmp_path / "planted"
    text = bytes(tensors[source].numpy()).decode()
    evil = text + f"\nopen({str(planted)!r}, 'w').write('ran')\n"
    tensors[source] = torch.frombuffer(bytearray(evil.encode()), dtype=torch.uint8)
    metadata["checksum"] = _checksum(tensors)
    tampered = tmp_path / "tampered.lamina"
    save_file(tensors, str(tampered), metadata)
    result = _load_in_fresh_process(tampered, idx, want, tmp_path / "cache")
    assert result["equal"] and not planted.exists()


def test_a_loaded_module_keeps_the_kernel_language_it_was_compiled_with(saved) -> None:
    path, idx, want = saved
    loaded = lamina.load(path, frozen=False)
    assert loaded.options.kernel_language == "numba"
    with torch.no_grad():
        assert torch.equal(loaded(torch.load(idx)), torch.load(want))


def test_a_file_from_another_format_version_is_a_clear_error(saved, tmp_path) -> None:
    path, _, _ = saved
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "future.lamina"), {**metadata, "version": "99"})
    with pytest.raises(lamina.LaminaError, match="another version of lamina.*save it again"):
        lamina.load(tmp_path / "future.lamina")


def test_lamina_run_and_dump_read_a_saved_module(saved, capsys) -> None:
    path, _, _ = saved
    assert cli(["run", str(path), "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "first call" in out and "median of 2 calls" in out and "output [2, 16, 96] float32" in out
    assert cli(["dump", str(path)]) == 0
    assert capsys.readouterr().out.startswith("graph @forward(%idx: i64[2,16])")


def test_lamina_run_refuses_what_is_not_a_saved_module(tmp_path, capsys) -> None:
    text = tmp_path / "g.lamina"
    text.write_text("graph @g(%x: f32[2]) {\n  return %x\n}\n")
    assert cli(["run", str(text)]) == 2
    assert "not a module saved by lamina.save" in capsys.readouterr().err
