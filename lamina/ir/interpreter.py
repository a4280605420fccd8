"""Run any Graph on NumPy arrays with each op's reference semantics: the oracle for every test."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import sympy

from .core import Graph, Op, Region
from .dtypes import DType, round_to
from .errors import DivisionByZeroError, IndexOutOfRangeError, LaminaError
from .ops import REGISTRY, is_terminator
from .ops.collective import DEFS as _COLLECTIVES
from .ops.structural import newton_schedule
from .shapes import evaluate
from .targets import OpTable

# ops with regions -> method(interpreter, op, args): what running them means
GROUP_OPS = frozenset(d.name for d in _COLLECTIVES)  # their meaning needs every rank: ir/group.py
REGION_SEMANTICS: OpTable = OpTable("interpreter", "region semantics")


def _update_norm(old: Sequence[np.ndarray], new: Sequence[np.ndarray]) -> float:
    """||new - old|| / ||new|| over all rows, in float64."""
    diff = sum(float(np.sum((n.astype(np.float64) - o) ** 2)) for o, n in zip(old, new))
    size = sum(float(np.sum(n.astype(np.float64) ** 2)) for n in new)
    return float(np.sqrt(diff / size)) if size > 0 else 0.0


class InterpreterError(LaminaError, RuntimeError):
    """An op failed at run time (bad index, shape that does not bind); names the op and module."""


def bind_symbols(types: Sequence[Any], arrays: Sequence[np.ndarray]) -> dict[sympy.Symbol, int]:
    """Bind the symbolic dims of ``types`` from the arrays' shapes; raises ValueError on mismatch.

    Plain symbols bind directly; a dim like ``2*T`` whose only unknown is one symbol is solved for it.
    """
    pairs = []
    for t, a in zip(types, arrays):
        if len(t.shape) != a.ndim:
            raise ValueError(f"expected rank {t.rank} for {t}, got shape {list(a.shape)}")
        pairs.extend((d, int(n), t, a.shape) for d, n in zip(t.shape, a.shape) if not isinstance(d, int))
    bindings: dict[sympy.Symbol, int] = {}
    pending = list(pairs)
    while pending:
        progress = False
        for d, n, t, shape in list(pending):
            unknown = d.free_symbols - set(bindings)
            if not unknown:
                pending.remove((d, n, t, shape))
                continue
            if len(unknown) == 1:
                (sym,) = unknown
                solutions = [v for v in sympy.solve(sympy.Eq(d.subs(bindings), n), sym) if v.is_Integer and v > 0]
                if len(solutions) != 1:
                    raise ValueError(f"expected shape {t} but got {list(shape)}")
                bindings[sym] = int(solutions[0])
                progress = True
        if not progress and pending:
            names = sorted(str(s) for d, *_ in pending for s in d.free_symbols - set(bindings))
            raise ValueError(f"symbols {', '.join(names)} cannot be determined from the input shapes")
    for d, n, t, shape in pairs:
        if evaluate(d, bindings) != n:
            raise ValueError(f"expected shape {t} but got {list(shape)}")
    for t, a in zip(types, arrays):
        if any(isinstance(d, int) and d != n for d, n in zip(t.shape, a.shape)):
            raise ValueError(f"expected shape {t} but got {list(a.shape)}")
    return bindings


def _concrete(value: Any, bindings: Mapping[sympy.Symbol, int]) -> Any:
    if isinstance(value, sympy.Expr):
        return evaluate(value, bindings)
    if isinstance(value, list):
        return [_concrete(v, bindings) for v in value]
    return value


_LOW_PRECISION = (DType.f16, DType.bf16)


class Interpreter:
    """Evaluates ops in order; f16/bf16 compute in f32 and round to their type after each op."""

    def __init__(self, bindings: Mapping[sympy.Symbol, int]) -> None:
        self.bindings = dict(bindings)
        self.iterations: list[int] = []  # per early-stopping newton chunk / iterate op run, in order

    def run_ops(self, ops: Sequence[Op], env: dict[int, np.ndarray]) -> None:
        for op in ops:
            if is_terminator(op):
                continue
            args = [env[id(v)] for v in op.operands]
            outs = self.run_op(op, args)
            for value, out in zip(op.results, outs):
                env[id(value)] = out

    def run_region(self, region: Region, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        env = {id(a): x for a, x in zip(region.args, args)}
        self.run_ops(region.ops, env)
        return [env[id(v)] for v in region.results]

    @REGION_SEMANTICS.register("fused")
    def run_fused(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        return self.run_region(op.regions[0], args)

    @REGION_SEMANTICS.register("newton")
    def run_newton(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        """The reference semantics of ``newton`` (see its doc in ``ops/structural.py``); iteration counts
        of chunks that stop early go to ``self.iterations``."""
        dtype = op.results[0].type.dtype
        return newton_schedule(op, args, self.run_region, lambda a, b: round_to(a + b, dtype), _update_norm,
                               self.iterations if op.attrs["tol"] > 0 else None)

    @REGION_SEMANTICS.register("iterate")
    def run_iterate(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        """``iterate``: run the region until its last result is under ``tol`` or ``max_iters`` times."""
        carried, invariant = args[: op.attrs["carried"]], args[op.attrs["carried"]:]
        for count in range(1, op.attrs["max_iters"] + 1):
            *carried, r = self.run_region(op.regions[0], [*carried, *invariant])
            if float(r) < op.attrs["tol"]:
                break
        self.iterations.append(count)
        return [*carried, np.array(count, dtype=np.int64)]

    @REGION_SEMANTICS.register("route")
    def run_route(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        """``route``: the region's results when the decision holds, else the ``otherwise`` inputs (or zeros)."""
        if bool(args[0]):
            return self.run_region(op.regions[0], args[1:])
        shapes = [tuple(_concrete(d, self.bindings) for d in v.type.shape) for v in op.results]
        return [args[1 + i] if i >= 0 else np.zeros(shape, v.type.dtype.numpy)
                for i, shape, v in zip(op.attrs["otherwise"], shapes, op.results)]

    def run_op(self, op: Op, args: list[np.ndarray]) -> list[np.ndarray]:
        opdef = REGISTRY[op.name]
        try:
            if op.regions:
                outs = REGION_SEMANTICS.get(op.name, op.describe())(self, op, args)
            elif opdef.reference is None and opdef.name in GROUP_OPS:
                raise InterpreterError(f"{op.describe()} needs the other ranks' values: interpret the graph in a "
                                       "simulated group (lamina.ir.group.interpret_group)")
            elif opdef.reference is None:
                raise InterpreterError(f"op {op.name} has no reference semantics")
            else:
                attrs = {k: _concrete(v, self.bindings) for k, v in op.attrs.items()}
                wide = [a.astype(np.float32) if a.dtype == np.float16 else a for a in args]
                with np.errstate(all="ignore"):
                    result = opdef.reference(wide, attrs)
                outs = list(result) if isinstance(result, tuple) else [result]
        except (InterpreterError, IndexOutOfRangeError, DivisionByZeroError):
            raise
        except IndexError as e:  # the model's data, not lamina: as eager PyTorch, an index error
            raise IndexOutOfRangeError(f"{op.describe()}: {e}") from e
        except ZeroDivisionError as e:
            raise DivisionByZeroError(f"{op.describe()}: {e}") from e
        except (ValueError, TypeError) as e:
            where = f" at {op.loc.module}" if op.loc.module else ""
            raise InterpreterError(f"{op.name}{where} failed: {e}") from e
        return [_contiguous(round_to(o, v.type.dtype)) for o, v in zip(outs, op.results)]


def _contiguous(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array that owns or shares nothing surprising (0-d arrays stay 0-d)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def interpret(graph: Graph, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Outputs of ``graph`` for ``inputs`` (positional) and ``params`` (by key)."""
    interpreter, env = prepare(graph, inputs, params or {})
    interpreter.run_ops(graph.ops, env)
    return [env[id(v)] for v in graph.outputs]


def prepare(graph: Graph, inputs: Sequence[np.ndarray],
            params: Mapping[str, np.ndarray]) -> tuple["Interpreter", dict[int, np.ndarray]]:
    """An interpreter with ``graph``'s size symbols bound by ``inputs`` and ``params``, and the environment
    holding them (checked against the graph's types)."""
    if len(inputs) != len(graph.inputs):
        raise InterpreterError(f"graph @{graph.name} takes {len(graph.inputs)} inputs, got {len(inputs)}")
    missing = [p.key for p in graph.params if p.key not in params]
    if missing:
        raise InterpreterError(f"graph @{graph.name} is missing parameters {missing[:5]}")
    arrays = [np.asarray(x) for x in inputs]
    for value, array in zip(graph.inputs, arrays):
        if array.dtype != value.type.dtype.numpy:
            raise InterpreterError(f"input {value.hint or ''} expects {value.type}, got dtype {array.dtype}")
    weights = [np.asarray(params[p.key]) for p in graph.params]
    for p, w in zip(graph.params, weights):
        if w.dtype != p.value.type.dtype.numpy:
            raise InterpreterError(f"parameter {p.key} expects {p.value.type}, got dtype {w.dtype}")
    try:
        bindings = bind_symbols([v.type for v in graph.inputs] + [p.value.type for p in graph.params], arrays + weights)
    except ValueError as e:
        raise InterpreterError(f"graph @{graph.name}: {e}") from None
    env: dict[int, np.ndarray] = {id(v): a for v, a in zip(graph.inputs, arrays)}
    for p, w in zip(graph.params, weights):
        env[id(p.value)] = w
    return Interpreter(bindings), env


