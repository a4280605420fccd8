"""Errors users of lamina see; each says what went wrong, where, and what to do."""
from __future__ import annotations

from dataclasses import dataclass

from .ir.errors import DivisionByZeroError, IndexOutOfRangeError, IRParseError, LaminaError, VerifyError


@dataclass(frozen=True)
class UnsupportedOp:
    """One op lamina cannot translate: the torch target, its module path, and why."""

    target: str
    module: str
    node: str
    reason: str = ""

    def __str__(self) -> str:
        where = self.module or "<top level>"
        why = f": {self.reason}" if self.reason else ""
        return f"{self.target} in module {where} (node {self.node}){why}"


class UnsupportedOpsError(LaminaError, NotImplementedError):
    """The model uses ops lamina cannot translate; lists every one, not only the first."""

    def __init__(self, ops: list[UnsupportedOp], model: str = "the model") -> None:
        self.ops = ops
        lines = "\n".join(f"  - {op}" for op in ops)
        self.summary = f"{model} uses {len(ops)} op(s) lamina does not support:\n{lines}"
        super().__init__(
            f"{self.summary}\nRewrite those parts with supported ops (`lamina ops` lists them), or pass "
            "fallback=True to run the model in eager PyTorch."
        )


class ExportError(LaminaError, RuntimeError):
    """torch.export could not trace the model (the cause is chained); nothing lamina can compile."""


class InputMismatchError(LaminaError, ValueError):
    """A compiled module was called with inputs that differ from the ones it was compiled for."""


__all__ = ["IRParseError", "InputMismatchError", "DivisionByZeroError", "ExportError", "IndexOutOfRangeError", "LaminaError", "UnsupportedOp", "UnsupportedOpsError", "VerifyError"]
