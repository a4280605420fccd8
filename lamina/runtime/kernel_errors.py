"""Errors found by kernels: index checks decided per plan (or per call), and failures recorded in error buffers.

A kernel with checks (``Kernel.checks``) writes ``[check, value, size]`` into its slot of
the plan's error array when one fails; the wrapper tests the slots after the last launch and
calls ``raise_kernel_errors``, which clears them (the next call starts clean) and raises the
first failure in program order.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..codegen.kernel import IndexAssumption, KernelCheck
from ..errors import DivisionByZeroError, IndexOutOfRangeError


def index_message(what: str, value: Any, size: Any, wrap: bool) -> str:
    valid = f"-{size}..{size - 1}" if wrap else f"0..{size - 1}"
    return (f"{what}: index {value} is out of range (valid: {valid}); eager PyTorch raises here too: "
            "check the index tensor against the dim it indexes (token ids against the vocabulary, positions "
            "against the position table)")


def check_assumptions(assumptions: Sequence[IndexAssumption], size: Callable[[Any], int]) -> None:
    """Raise IndexOutOfRangeError where indices whose bounds the sizes fix do not fit their dim."""
    for a in assumptions:
        check_assumption(a, size(a.lo), size(a.hi), size(a.size))


def check_assumption(a: IndexAssumption, lo: int, hi: int, n: int) -> None:
    """Raise IndexOutOfRangeError unless indices in ``[lo, hi]`` fit a dim of ``n`` (the wrapper
    calls it per call when the bounds depend on the call's sizes)."""
    if lo < (-n if a.wrap else 0):
        raise IndexOutOfRangeError(index_message(a.what, lo, n, a.wrap))
    if hi > n - 1:
        raise IndexOutOfRangeError(index_message(a.what, hi, n, a.wrap))


def raise_kernel_errors(slots: Sequence[tuple[Any, Sequence[KernelCheck]]]) -> None:
    """Clear every error slot and raise the first recorded failure (slots in program order)."""
    failures = []
    for err, checks in slots:
        code, value, size = (int(x) for x in err[:3].tolist())
        if code:
            failures.append((checks[code - 1], value, size))
        err[:] = 0
    if not failures:
        return
    check, value, size = failures[0]
    if check.kind == "zero_division":
        raise DivisionByZeroError(f"{check.what}: integer division by zero (eager PyTorch raises "
                                      "ZeroDivisionError); guard the divisor, or divide in floating point")
    raise IndexOutOfRangeError(index_message(check.what, value, size, check.wrap))
