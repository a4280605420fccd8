"""CompileOptions: everything a compile call needs, passed along explicitly (no global state)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends import backend, kernel_language


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
    kernel_language: str | None = None  # None: the backend's default (backends.KERNEL_LANGUAGES)
    calibration: Any = None  # a lamina.calibrate result, for passes that choose per layer (quantize{budget=})
    state: Any = None  # a runtime.state.ProgramState shared with other compiled modules (prefill and decode)

    def __post_init__(self) -> None:
        backend(self.backend)  # an unknown name raises, listing the known ones
        kernel_language(self.backend, self)  # so does a kernel language the backend does not have
