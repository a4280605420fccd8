"""Errors raised by the IR layer: located parse errors and verifier errors."""
from __future__ import annotations


class LaminaError(Exception):
    """Base class of every error lamina raises on purpose."""


class IRParseError(LaminaError, ValueError):
    """Malformed IR text; carries the line and column and shows the offending line."""

    def __init__(self, message: str, line: int, column: int, source: str | None = None,
                 filename: str | None = None) -> None:
        self.line, self.column, self.message = line, column, message
        text = f"{filename + ', ' if filename else ''}line {line}, column {column}: {message}"
        if source is not None:
            lines = source.splitlines()
            if 1 <= line <= len(lines):
                text += f"\n  {lines[line - 1]}\n  {' ' * (column - 1)}^"
        super().__init__(text)


class VerifyError(LaminaError, ValueError):
    """A graph that breaks an IR rule; the message names the op, its %value and module path."""

    def __init__(self, message: str, op: object = None) -> None:
        self.op = op
        super().__init__(message)


class IndexOutOfRangeError(LaminaError, IndexError):
    """An index tensor holds a value outside the dim it indexes (eager PyTorch raises here too)."""


class DivisionByZeroError(LaminaError, ZeroDivisionError):
    """An integer division or remainder by zero (eager PyTorch raises here too)."""
