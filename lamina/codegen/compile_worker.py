"""A kernel-compiling process: ``python compile_worker.py`` reads jobs (JSON) on stdin and compiles each
kernel for its argument types, which fills Numba's on-disk cache beside the kernel's file.

Run by ``codegen/parallel_compile.py``, several at once, while the parent waits: Numba compiles under
one process-wide lock, so processes are the only way to use more than one core for it. This file
imports no part of lamina (that would import torch, a second or more per worker); a job names the
kernel module's file and the module name the parent imports it under, because Numba's cache entries
are named after the module.

A job: ``{"path": ..., "module": ..., "function": ..., "args": ["a:float32", "s:int64", ...]}``, where
``a:`` is a flat C-contiguous array of that dtype and ``s:`` a scalar. Prints one line per job,
``ok <function>`` or ``failed <function>: <error>``; a failed job is compiled again by the parent.
"""
from __future__ import annotations

import importlib.util
import json
import sys


def _argument_types(args: list[str]) -> tuple:
    import numba
    import numpy as np

    types = []
    for a in args:
        kind, dtype = a.split(":")
        value = np.empty(1, dtype) if kind == "a" else np.dtype(dtype).type(0)
        types.append(numba.typeof(value))
    return tuple(types)


def compile_job(job: dict) -> None:
    spec = importlib.util.spec_from_file_location(job["module"], job["path"])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[job["module"]] = module
    spec.loader.exec_module(module)
    getattr(module, job["function"]).compile(_argument_types(job["args"]))


def main() -> int:
    for job in json.load(sys.stdin):
        try:
            compile_job(job)
            print(f"ok {job['function']}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported; the parent compiles this kernel itself
            print(f"failed {job['function']}: {type(e).__name__}: {e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
