"""Check a Graph against the IR rules and the op registry."""
from __future__ import annotations

from collections.abc import Iterable

from .core import Graph, Op, Region, Value
from .errors import VerifyError
from .opdef import InferenceError
from .ops import REGISTRY, is_terminator
from .ops.structural import newton_result_types, newton_stacks, region_arg_types, region_result_types
from .printer import Namer
from .targets import OpTable
from .ops.collective import KINDS as COLLECTIVES

# region ops whose results are not simply their region's yields -> method(checker, op, attrs): result types
REGION_TYPING: OpTable = OpTable("verifier", "region typing")


class _Checker:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.name = Namer(graph)
        self.defined: set[int] = set()

    def where(self, op: Op) -> str:
        results = ", ".join(self.name(v) for v in op.results)
        head = f"{results} = {op.name}" if results else op.name
        return head + (f" (module {op.loc.module})" if op.loc.module else "")

    def fail(self, op: Op, message: str) -> VerifyError:
        return VerifyError(f"{self.where(op)}: {message}", op)

    def define(self, values: Iterable[Value], op: Op | None) -> None:
        for v in values:
            if id(v) in self.defined:
                where = self.where(op) if op else f"graph @{self.graph.name}"
                raise VerifyError(f"{where}: {self.name(v)} is defined more than once", op)
            self.defined.add(id(v))

    def run(self) -> None:
        keys = [p.key for p in self.graph.params]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise VerifyError(f"graph @{self.graph.name}: parameter {sorted(dupes)[0]!r} is declared twice")
        self.define(self.graph.inputs, None)
        self.define((p.value for p in self.graph.params), None)
        self.block(self.graph.ops, visible=set(self.defined), terminator=None)
        for v in self.graph.outputs:
            if id(v) not in self.defined:
                raise VerifyError(f"graph @{self.graph.name}: return uses {self.name(v)}, which is not defined")
        self.states()
        self.pending()

    def pending(self) -> None:
        """A started collective's result is in flight: read by ``wait`` ops only, and by at least one."""
        readers: dict[int, list[str]] = {id(v): ["return"] for v in self.graph.outputs}
        for op in self.graph.walk():
            for v in op.operands:
                readers.setdefault(id(v), []).append(op.name)
        starts = {id(op.results[0]) for op in self.graph.walk()
                  if op.name.endswith("_start") and op.name.removesuffix("_start") in COLLECTIVES}
        for op in self.graph.walk():
            if op.results and id(op.results[0]) in starts:
                found = readers.get(id(op.results[0]), [])
                if not found or any(name != "wait" for name in found):
                    raise self.fail(op, f"the result of {op.name} is in flight: only a wait may read it, and one "
                                        f"must (read by {', '.join(found) or 'nothing'})")
            if op.name == "wait" and id(op.operands[0]) not in starts:
                raise self.fail(op, "wait reads a value no collective started (a *_start op's result)")

    def states(self) -> None:
        """States are the last inputs, in order, and the last outputs are their new values, of their types."""
        g, n = self.graph, len(self.graph.states)
        if not n:
            return
        keys = [s.key for s in g.states]
        if len(set(keys)) != n:
            raise VerifyError(f"graph @{g.name}: a state key is declared twice ({', '.join(keys)})")
        if n > len(g.inputs) or n > len(g.outputs):
            raise VerifyError(f"graph @{g.name}: {n} states need as many last inputs and outputs")
        for s, v, new in zip(g.states, g.inputs[len(g.inputs) - n:], g.outputs[len(g.outputs) - n:]):
            if s.value is not v:
                raise VerifyError(f"graph @{g.name}: state {s.key!r} must be one of the last {n} inputs, in the "
                                  "order of the states")
            if new.type != v.type:
                raise VerifyError(f"graph @{g.name}: state {s.key!r} is {v.type} but its new value (output "
                                  f"{len(g.outputs) - n + keys.index(s.key)}) is {new.type}")

    def block(self, ops: tuple[Op, ...], visible: set[int], terminator: str | None) -> None:
        for i, op in enumerate(ops):
            last = i == len(ops) - 1
            if is_terminator(op) and not (terminator and last):
                raise self.fail(op, f"{op.name} may only end a region")
            if terminator and last and op.name != terminator:
                raise self.fail(op, f"a region must end with {terminator}")
            for v in op.operands:
                if id(v) not in visible:
                    raise self.fail(op, f"operand {self.name(v)} is used before it is defined"
                                        " (or comes from outside an isolated region)")
            self.op(op)
            self.define(op.results, op)
            visible.update(id(v) for v in op.results)
        if terminator and not ops:
            raise VerifyError(f"graph @{self.graph.name}: empty region; it must end with {terminator}")

    def op(self, op: Op) -> None:
        if op.name not in REGISTRY:
            raise self.fail(op, f"unknown op {op.name!r}")
        opdef = REGISTRY[op.name]
        if (len(op.regions) != opdef.regions) if opdef.regions >= 0 else not op.regions:
            want = opdef.regions if opdef.regions >= 0 else "one or more"
            raise self.fail(op, f"{op.name} takes {want} region(s), has {len(op.regions)}")
        try:
            opdef.check_arity(len(op.operands))
            attrs = opdef.complete_attrs(op.attrs)
            if attrs != dict(op.attrs):
                missing = sorted(set(attrs) - set(op.attrs))
                raise InferenceError(f"attributes {missing} are not stated (passes must store complete attributes)")
            if op.name in REGION_TYPING:
                expected = REGION_TYPING.get(op.name)(self, op, attrs)
            elif op.regions:
                expected = tuple(self.region(op, r) for r in op.regions)[0]
            else:
                expected = opdef.infer_types([v.type for v in op.operands], attrs)
        except InferenceError as e:
            raise self.fail(op, str(e)) from None
        got = tuple(v.type for v in op.results)
        if got != tuple(expected):
            raise self.fail(op, f"result types {', '.join(map(str, got)) or '()'} differ from the inferred "
                                f"{', '.join(map(str, expected)) or '()'}")

    @REGION_TYPING.register("newton")
    def newton(self, op: Op, attrs: dict) -> tuple:
        """Layer bodies each yield f(h), of h's type; the pattern names a body per layer; weights add up."""
        at = op.attrs
        if at["iters"] < 1 or at["chunk"] < 1 or at["init"] != "input":
            raise InferenceError(f"newton needs iters >= 1, chunk >= 1 and init 'input', got {at['iters']}, "
                                 f"{at['chunk']}, {at['init']!r}")
        if not at["pattern"] or any(not 0 <= b < len(op.regions) for b in at["pattern"]):
            raise InferenceError(f"newton pattern {at['pattern']} must name regions 0..{len(op.regions) - 1}")
        needed = 1 + at["contexts"] + sum(len(r.args) - 1 - at["contexts"] for r in op.regions)
        if needed != len(op.operands):
            raise InferenceError(f"newton: its regions take {needed} operands, it has {len(op.operands)}")
        for b, stacks in enumerate(newton_stacks(op)):
            layers = at["pattern"].count(b)
            if layers == 0:
                raise InferenceError(f"newton region {b} is used by no layer (pattern {at['pattern']})")
            for v in stacks:
                if v.type.rank < 1 or v.type.shape[0] != layers:
                    raise InferenceError(f"newton: region {b} has {layers} layers in pattern {at['pattern']}, "
                                         f"but a stacked operand is {v.type}")
        for i, region in enumerate(op.regions):
            yields = self.region(op, region, i)
            if not yields or yields[0] != op.operands[0].type:
                raise InferenceError(f"newton region {i} must yield f(h) of the stream's type {op.operands[0].type} "
                                     "first (then the layer's exports)")
        return tuple(newton_result_types(op.regions, at))

    @REGION_TYPING.register("iterate")
    def iterate(self, op: Op, attrs: dict) -> tuple:
        """The region yields the carried values' types, then a scalar float (the residual)."""
        n = attrs["carried"]
        if not 0 < n <= len(op.operands) or attrs["max_iters"] < 1:
            raise InferenceError(f"iterate needs 0 < carried <= {len(op.operands)} operands and max_iters >= 1, "
                                 f"got carried={n}, max_iters={attrs['max_iters']}")
        yields = self.region(op, op.regions[0])
        carried = tuple(v.type for v in op.operands[:n])
        if yields[:-1] != carried or len(yields) != n + 1 or yields[-1].rank != 0 or not yields[-1].dtype.is_float:
            raise InferenceError(f"iterate region must yield the carried types ({', '.join(map(str, carried))}) "
                                 f"then a float scalar, got ({', '.join(map(str, yields))})")
        return tuple(region_result_types("iterate", op.regions, attrs))

    @REGION_TYPING.register("route")
    def route(self, op: Op, attrs: dict) -> tuple:
        """A bool scalar decision; per result, an input of its type (or -1: zeros) to give when not taken."""
        decision = op.operands[0].type
        if decision.rank != 0 or decision.dtype.name != "bool":
            raise InferenceError(f"route decision must be a bool scalar, got {decision}")
        yields = self.region(op, op.regions[0])
        inputs = op.operands[1:]
        if len(attrs["otherwise"]) != len(yields):
            raise InferenceError(f"route has {len(yields)} results but otherwise names {len(attrs['otherwise'])}")
        for j, (i, t) in enumerate(zip(attrs["otherwise"], yields)):
            if not -1 <= i < len(inputs):
                raise InferenceError(f"route otherwise[{j}]={i} is not an input (0..{len(inputs) - 1}) or -1 (zeros)")
            if i >= 0 and inputs[i].type != t:
                raise InferenceError(f"route result {j} is {t} but otherwise gives input {i} of type {inputs[i].type}")
        return yields

    def region(self, op: Op, region: Region, index: int = 0) -> tuple:
        arg_types = tuple(a.type for a in region.args)
        operand_types = region_arg_types(op, index)
        if arg_types != operand_types:
            raise self.fail(op, f"region arguments ({', '.join(map(str, arg_types))}) do not match operands "
                                f"({', '.join(map(str, operand_types))})")
        self.define(region.args, op)
        self.block(region.ops, visible={id(a) for a in region.args}, terminator="yield")
        return tuple(v.type for v in region.results)


def verify(graph: Graph) -> Graph:
    """Raise VerifyError if ``graph`` breaks SSA, typing, region or parameter rules; else return it."""
    _Checker(graph).run()
    return graph
