"""Drop a kernel's ``Let``s whose values nothing reads.

Rewrites leave them behind: when ``use_scratch_rows`` makes an element loop read a row it already
computed, the loop's own computation of that row (a depthwise convolution's nine taps, its batch
norm and SiLU) is still there, unused. LLVM deletes it from the machine code, but Numba types,
parallelizes and lowers every statement first, so dead code costs compile time (a fused
EfficientNet block took 14 s, half of it for a second copy of the convolution that nothing read).

The analysis is by name over the whole kernel: a ``Let`` stays when its name is read anywhere by a
statement that stays. That is conservative where a name is bound in two scopes, and never drops a
value that is read.
"""
from __future__ import annotations

from dataclasses import replace

from .kernel import Expr, Kernel, Let, Loop, Reduce, Store, Var, walk


def drop_dead_lets(kernel: Kernel) -> Kernel:
    """``kernel`` without the ``Let``s no kept statement reads (to a fixed point)."""
    lets: dict[str, list[Expr]] = {}
    read: set[str] = set()
    _collect(kernel.body, lets, read)
    for b in kernel.scratch:
        read |= _names(b.size)
    read |= _names(kernel.outer)
    live: set[str] = set()
    pending = [n for n in read if n in lets]
    while pending:
        name = pending.pop()
        if name in live:
            continue
        live.add(name)
        for value in lets[name]:
            pending += [n for n in _names(value) if n in lets and n not in live]
    body = _keep(kernel.body, live)
    return kernel if body == kernel.body else replace(kernel, body=body)


def _names(e: Expr) -> set[str]:
    return {x.name for x in walk(e) if isinstance(x, Var)}


def _collect(body: tuple, lets: dict[str, list[Expr]], read: set[str]) -> None:
    """``lets``: every Let's value by name; ``read``: names read by statements other than Lets."""
    for s in body:
        if isinstance(s, Let):
            lets.setdefault(s.name, []).append(s.value)
        elif isinstance(s, Store):
            read |= _names(s.index) | _names(s.value)
        elif isinstance(s, Reduce):
            read |= _names(s.extent) | _names(s.value)
            _collect(s.body, lets, read)
        elif isinstance(s, Loop):
            read |= _names(s.extent)
            _collect(s.body, lets, read)


def _keep(body: tuple, live: set[str]) -> tuple:
    out = []
    for s in body:
        if isinstance(s, Let) and s.name not in live:
            continue
        if isinstance(s, Reduce):
            s = replace(s, body=_keep(s.body, live))
        elif isinstance(s, Loop):
            s = replace(s, body=_keep(s.body, live))
        out.append(s)
    return tuple(out)

