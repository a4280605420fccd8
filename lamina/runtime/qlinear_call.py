"""The wrapper line that runs ``qlinear`` through a per-layer dispatcher object (cpu or cuda)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ir.core import Op
from ..ir.quant_format import QuantFormat


def qlinear_lines(op: Op, args: list[str], out: str, plan: Any,
                  make: Callable[[QuantFormat, int, int, str], Any]) -> list[str]:
    """``make(format, K, N, act)`` builds the dispatcher, kept by the plan; the line calls it with x,
    qweight, scales, zeros (or None) and the output buffer."""
    fmt = QuantFormat.of(op.attrs)
    k, n = op.operands[0].type.shape[-1], op.results[0].type.shape[-1]
    fn = plan.static(make(fmt, k, n, op.attrs["act"]), "Q")
    zeros = args[3] if len(args) == 4 else "None"
    return [f"{fn}({args[0]}, {args[1]}, {args[2]}, {zeros}, {out})"]
