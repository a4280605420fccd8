"""How an op is defined: operands, attributes, type inference, NumPy reference.

Every op lamina knows has exactly one OpDef, in ``lamina/ir/ops/``. The
verifier, interpreter, printer/parser, frontends and codegen all read it.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy

from .dtypes import DType
from .types import TensorType


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class Category(enum.Enum):
    """What an op is, as passes and code generators see it: the one classification they dispatch on."""

    ELEMENTWISE = "elementwise"  # the same scalar function at every position of broadcast operands
    POINTWISE = "pointwise"      # one output element at a time, reading operands at positions derived
    #                              from the output's (gathers, padding, position masks, per-channel params)
    REDUCTION = "reduction"      # one value (or a normalised row) per row of reduced axes; kernel rows
    VIEW = "view"                # an index transform of one operand: never a kernel of its own
    CONSTANT = "constant"        # a tensor made from attributes only (full, arange)
    LIBRARY = "library"          # runs as a library call or template outside generated kernels
    SCAN = "scan"                # a prefix sum over layers: a kernel of its own that nothing joins
    STRUCTURAL = "structural"    # regions and their terminator

    @property
    def in_kernel(self) -> bool:
        """Whether ops of this category are computed inside generated kernels."""
        return self in (Category.ELEMENTWISE, Category.POINTWISE, Category.REDUCTION, Category.SCAN)

    @property
    def free(self) -> bool:
        """Views and constants cost no memory traffic: every kernel that reads one recomputes it."""
        return self in (Category.VIEW, Category.CONSTANT)


class InferenceError(ValueError):
    """Operands or attributes an op cannot accept; the verifier adds the op's location."""


# attribute kinds: a checker per kind
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_dim(v: Any) -> bool:
    return _is_int(v) or isinstance(v, sympy.Expr)


def _is_float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_ATTR_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "float": _is_float,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dtype": lambda v: isinstance(v, DType),
    "ints": lambda v: isinstance(v, list) and all(_is_int(x) for x in v),
    "floats": lambda v: isinstance(v, list) and all(_is_float(x) for x in v),
    "dims": lambda v: isinstance(v, list) and all(_is_dim(x) for x in v),
    "dim": _is_dim,
    "scalar": lambda v: isinstance(v, (bool, int, float)),
    "float?": lambda v: v is None or _is_float(v),
    "int?": lambda v: v is None or _is_int(v),
    "str?": lambda v: v is None or isinstance(v, str),
}


@dataclass(frozen=True)
class AttrSpec:
    """An attribute's kind (see ``_ATTR_CHECKS``) and default (``REQUIRED`` if none)."""

    kind: str
    default: Any = REQUIRED

    def __post_init__(self) -> None:
        if self.kind not in _ATTR_CHECKS:
            raise ValueError(f"unknown attribute kind {self.kind!r}")

    def accepts(self, value: Any) -> bool:
        return _ATTR_CHECKS[self.kind](value)


@dataclass(frozen=True)
class Neutral:
    """``op(x, value) == x`` (and ``op(value, x) == x`` when ``commutes``): what canonicalize drops."""

    value: float
    commutes: bool = True


Infer = Callable[[Sequence[TensorType], Mapping[str, Any]], Sequence[TensorType]]
Reference = Callable[[Sequence[np.ndarray], Mapping[str, Any]], Any]
# floating-point operations of one op from its operands' and results' concrete shapes and its attrs
Flops = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]], Mapping[str, Any]], int]
ReducedAxes = Callable[[int, Mapping[str, Any]], tuple[int, ...]]
ALL_OPERANDS = "all"


@dataclass(frozen=True)
class OpDef:
    """One op. ``operands`` names them; ``name?`` is optional (trailing), ``*name`` variadic."""

    name: str
    operands: tuple[str, ...]
    infer: Infer
    reference: Reference | None
    category: Category
    doc: str
    attrs: Mapping[str, AttrSpec] = field(default_factory=dict)
    regions: int = 0  # how many regions; -1: one or more
    reduces: ReducedAxes | None = None  # REDUCTION: the axes of operand 0 reduced, from its rank and the attrs
    remapped: tuple[int, ...] | str = ()  # POINTWISE: operands read at positions other than the output's
    #                                       (broadcasting aside); ALL_OPERANDS for every one
    scalar: Callable[..., Any] | None = None  # ELEMENTWISE composites: the formula over primitives (ir/scalar.py)
    neutral: Neutral | None = None  # an operand value that leaves the other unchanged (x + 0, x * 1)
    terminator: bool = False  # ends a region (yield): printed bare, never a value of its own
    program_regions: bool = False  # its regions are programs the runtime runs (a loop body): passes that
    #                                lower a graph for a backend (fuse, wrap) lower them too
    flops: Flops | None = None  # LIBRARY ops bound by arithmetic (GEMMs, convolutions, attention): what
    #                             profiles divide by time to give GFLOP/s; others are judged by bytes moved

    def __post_init__(self) -> None:
        if (self.category is Category.REDUCTION) != (self.reduces is not None):
            raise ValueError(f"op {self.name}: a reduction, and only a reduction, says which axes it reduces")

    def flop_count(self, operands: Sequence[Sequence[int]], results: Sequence[Sequence[int]],
                   attrs: Mapping[str, Any]) -> int | None:
        """``flops`` for these shapes, or None for an op judged by bytes."""
        return None if self.flops is None else int(self.flops(operands, results, attrs))

    def reduced_axes(self, rank: int, attrs: Mapping[str, Any]) -> tuple[int, ...]:
        """The axes of operand 0 (of ``rank``) this reduction reduces."""
        if self.reduces is None:
            raise TypeError(f"op {self.name} is a {self.category.value} op, not a reduction")
        return self.reduces(rank, attrs)

    def reads_remapped(self, k: int) -> bool:
        """Whether operand ``k`` is read at positions other than the output's (a gather's table)."""
        return self.remapped == ALL_OPERANDS or k in self.remapped

    @property
    def min_operands(self) -> int:
        return sum(1 for o in self.operands if not o.endswith("?") and not o.startswith("*"))

    @property
    def max_operands(self) -> int | None:
        return None if any(o.startswith("*") for o in self.operands) else len(self.operands)

    def check_arity(self, count: int) -> None:
        high = self.max_operands
        if count < self.min_operands or (high is not None and count > high):
            want = f"{self.min_operands}" if high == self.min_operands else f"{self.min_operands}..{high if high is not None else 'n'}"
            raise InferenceError(f"{self.name} takes {want} operands ({', '.join(self.operands)}), got {count}")

    def complete_attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """Attributes with defaults filled in; raises InferenceError on unknown, missing or mistyped ones."""
        unknown = sorted(set(attrs) - set(self.attrs))
        if unknown:
            raise InferenceError(f"{self.name} has no attribute {unknown[0]!r}; it takes {sorted(self.attrs) or 'none'}")
        out: dict[str, Any] = {}
        for key, spec in self.attrs.items():
            if key in attrs:
                value = attrs[key]
            elif spec.default is REQUIRED:
                raise InferenceError(f"{self.name} needs attribute {key!r} ({spec.kind})")
            else:
                value = spec.default
            if not spec.accepts(value):
                raise InferenceError(f"{self.name} attribute {key}={value!r} is not a {spec.kind}")
            out[key] = value
        return out

    def infer_types(self, operand_types: Sequence[TensorType], attrs: Mapping[str, Any]) -> tuple[TensorType, ...]:
        self.check_arity(len(operand_types))
        return tuple(self.infer(operand_types, attrs))


# ---- helpers shared by op definitions -------------------------------------------------

def same_dtype(name: str, types: Sequence[TensorType]) -> DType:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise InferenceError(f"{name} operands must share one dtype, got {', '.join(str(t) for t in types)}; insert a cast")
    return types[0].dtype


def need_float(name: str, t: TensorType) -> None:
    if not t.dtype.is_float:
        raise InferenceError(f"{name} needs a floating-point operand, got {t}")


def need_int(name: str, t: TensorType) -> None:
    if not t.dtype.is_int:
        raise InferenceError(f"{name} needs an integer operand, got {t}")


def need_rank(name: str, t: TensorType, rank: int | tuple[int, ...]) -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if t.rank not in ranks:
        raise InferenceError(f"{name} needs a rank-{'/'.join(map(str, ranks))} operand, got {t}")


def axes(name: str, dims: Sequence[int], rank: int) -> tuple[int, ...]:
    """Normalised, de-duplicated axes; raises InferenceError when out of range."""
    out = []
    for d in dims:
        if not -rank <= d < max(rank, 1):
            raise InferenceError(f"{name}: axis {d} is out of range for rank {rank}")
        out.append(d % max(rank, 1))
    if len(set(out)) != len(out):
        raise InferenceError(f"{name}: repeated axis in {list(dims)}")
    return tuple(out)


def registry(*defs: OpDef) -> dict[str, OpDef]:
    out: dict[str, OpDef] = {}
    for d in defs:
        if d.name in out:
            raise ValueError(f"op {d.name} is defined twice")
        out[d.name] = d
    return out
