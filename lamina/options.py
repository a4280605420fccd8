"""CompileOptions: everything a compile call needs, passed along explicitly (no global state)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("cpu", "cuda", "reference")


@dataclass(frozen=True)
class CompileOptions:
    """How to compile: target backend, pass pipeline, fallback policy, where to dump IR."""

    backend: str = "cpu"
    pipeline: str | None = None
    fallback: bool = True
    dump_dir: Path | None = None
    verify: bool = True
    check_inputs: bool = True
    poison: bool = False
    kernel_language: str = "cuda_c"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; available now: {', '.join(BACKENDS)}")
