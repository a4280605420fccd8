"""Per-target op tables: what a code generator, runtime or pass knows about each op.

An op's own facts live in its ``OpDef`` (``lamina/ir/ops``). What one target does with it —
a kernel lowering, a library call, an MLIR lowering, a layer-batching rule — is registered
next to the code that implements it::

    MLIR = OpTable("mlir")

    @MLIR.register("softmax", "log_softmax")
    def _softmax(lowering, op, x): ...

Each table is filled once, when its module is imported, and read-only afterwards.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import LaminaError

F = TypeVar("F", bound=Callable[..., object])


class NoLowering(LaminaError, NotImplementedError):
    """An op the target has no entry for; the message lists what it does have."""


class OpTable(Generic[F]):
    """Op name -> implementation for one target."""

    def __init__(self, target: str, what: str = "lowering", error: type[NoLowering] = NoLowering) -> None:
        self.target, self.what, self.error = target, what, error
        self._entries: dict[str, F] = {}

    def register(self, *names: str) -> Callable[[F], F]:
        """Decorator: ``fn`` implements ops ``names`` for this target."""
        from .ops import lookup  # the registry imports modules that define tables

        for name in names:
            lookup(name)  # an unknown op name is a typo
            if name in self._entries:
                raise ValueError(f"op {name} has two {self.what}s for target {self.target}")

        def add(fn: F) -> F:
            for name in names:
                self._entries[name] = fn
            return fn

        return add

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def get(self, name: str, where: str = "") -> F:
        """The entry for op ``name``; NoLowering names the op and what the target has instead."""
        try:
            return self._entries[name]
        except KeyError:
            at = f" ({where})" if where else ""
            raise self.error(f"op {name}{at} has no {self.what} for target {self.target}; it has {self.what}s for: "
                             f"{', '.join(self)}") from None
