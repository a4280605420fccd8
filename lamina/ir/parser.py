"""Read the IR text form (grammar.lark) back into a Graph, with located errors."""
from __future__ import annotations

import functools
import json
import re
import sys
from importlib import resources
from typing import Any

import lark
import sympy

from .core import Graph, Loc, Op, Param, Region, Shard, State, Value
from .dtypes import DType
from .errors import IRParseError, VerifyError
from .ops import REGISTRY
from .shapes import dim, symbol
from .types import TensorType

_FUNCTIONS = {"floor": sympy.floor, "ceiling": sympy.ceiling, "Min": sympy.Min, "Max": sympy.Max, "Mod": sympy.Mod}
_LOC_RE = re.compile(r"#\s*(?P<module>[^\s(]*)\s*(?:\((?P<target>[^)]*)\))?\s*$")
_TOKEN_NAMES = {
    "VALUE": "a %value", "NAME": "a name", "DTYPE": "a dtype", "INT": "an integer", "FLOAT": "a float",
    "STRING": "a string", "LOC": "a # location", "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'",
    "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "CIRCUMFLEX": "'^'", "AT": "'@'",
}


@functools.cache
def _lark() -> lark.Lark:
    """The LALR parser; its tables are cached in the kernel cache directory (building them takes most
    of a second, a warm start's budget). Lark checks the grammar's hash on load and rebuilds from
    the grammar when the cache is stale, damaged or cannot be written."""
    from ..codegen.cache import default_cache_dir

    grammar = resources.files("lamina.ir").joinpath("grammar.lark").read_text()
    directory = default_cache_dir() / "parser"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        cache: bool | str = str(directory / f"ir-grammar-py{sys.version_info[0]}{sys.version_info[1]}.lark")
    except OSError:
        cache = False
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=cache)


def _expected(names: set[str]) -> str:
    shown = sorted(_TOKEN_NAMES.get(n, n.strip('"').lower()) for n in names)
    return ", ".join(shown[:8]) + (" ..." if len(shown) > 8 else "")


def parse(text: str, filename: str | None = None) -> Graph:
    """Parse IR text into a verified Graph; raises IRParseError with line and column (and ``filename``)."""
    try:
        return _parse(text)
    except IRParseError as e:
        if filename is None:
            raise
        raise IRParseError(e.message, e.line, e.column, text, filename) from None


def _parse(text: str) -> Graph:
    try:
        tree = _lark().parse(text)
    except lark.UnexpectedCharacters as e:
        raise IRParseError(f"unexpected character {text[e.pos_in_stream]!r}; expected {_expected(e.allowed)}",
                           e.line, e.column, text) from None
    except lark.UnexpectedToken as e:
        got = "end of input" if e.token.type == "$END" else repr(str(e.token))
        raise IRParseError(f"unexpected {got}; expected {_expected(e.expected)}", e.line, e.column, text) from None
    except lark.UnexpectedEOF as e:
        raise IRParseError(f"unexpected end of input; expected {_expected(set(e.expected))}",
                           e.line, e.column, text) from None
    return _Reader(text).graph(tree.children[0])


class _Reader:
    """Turns the parse tree into IR objects, tracking SSA names per region scope."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.positions: dict[int, tuple[int, int]] = {}

    def error(self, message: str, node: Any) -> IRParseError:
        line = getattr(node, "line", None) or getattr(getattr(node, "meta", None), "line", 1)
        column = getattr(node, "column", None) or getattr(getattr(node, "meta", None), "column", 1)
        return IRParseError(message, line, column, self.text)

    # --- scopes -------------------------------------------------------------------------
    def define(self, scope: dict[str, Value], token: lark.Token, value: Value) -> None:
        if str(token) in scope:
            raise self.error(f"{token} is defined twice", token)
        scope[str(token)] = value

    def use(self, scope: dict[str, Value], token: lark.Token) -> Value:
        try:
            return scope[str(token)]
        except KeyError:
            raise self.error(f"{token} is used but not defined (regions see only their own ^ arguments)", token) from None

    # --- structure ----------------------------------------------------------------------
    def graph(self, node: lark.Tree) -> Graph:
        name_tok, *rest = node.children
        scope: dict[str, Value] = {}
        inputs, params, ops, states = [], [], [], []
        outputs: tuple[Value, ...] = ()
        for child in rest:
            if child is None:
                continue
            if child.data == "arg":
                value = self.arg(child)
                self.define(scope, child.children[0], value)
                inputs.append(value)
            elif child.data == "params":
                for p in child.children:
                    if p is None:
                        continue
                    tok, type_node, key_tok, shard_node = p.children
                    key = json.loads(key_tok) if key_tok is not None else str(tok)[1:]
                    value = Value(self.type(type_node), key)
                    self.define(scope, tok, value)
                    shard = Shard(*(int(t) for t in shard_node.children)) if shard_node is not None else None
                    params.append(Param(key, value, shard))
            elif child.data == "states":
                for node in child.children:
                    tok, init_node, key_tok = node.children
                    init = self.value(init_node)
                    if not isinstance(init, (int, float)) or isinstance(init, bool):
                        raise self.error(f"state {tok} needs a number as its initial value", tok)
                    key = json.loads(key_tok) if key_tok is not None else str(tok)[1:]
                    states.append(State(key, self.use(scope, tok), float(init)))
            elif child.data == "op":
                ops.append(self.op(child, scope))
            elif child.data == "ret":
                outputs = tuple(self.use(scope, t) for t in child.children if t is not None)
        graph = Graph(str(name_tok), tuple(inputs), tuple(params), tuple(ops), outputs, states=tuple(states))
        self.verify(graph)
        return graph

    def verify(self, graph: Graph) -> None:
        from .verifier import verify

        try:
            verify(graph)
        except VerifyError as e:
            line, column = self.positions.get(id(e.op), (1, 1))
            raise IRParseError(str(e), line, column, self.text) from None

    def arg(self, node: lark.Tree) -> Value:
        tok, type_node = node.children
        return Value(self.type(type_node), str(tok)[1:])

    def op(self, node: lark.Tree, scope: dict[str, Value]) -> Op:
        results_node, name_tok, *middle = node.children
        loc_tok = middle.pop()
        name = str(name_tok)
        if name not in REGISTRY:
            raise self.error(f"unknown op {name!r}", name_tok)
        operands, attrs, regions, types = [], {}, (), []
        for child in middle:
            if child is None:
                continue
            if isinstance(child, lark.Token):
                operands.append(self.use(scope, child))
            elif child.data == "attrs":
                attrs = self.attrs(child)
            elif child.data == "regions":
                regions = tuple(self.region(r) for r in child.children)
            elif child.data == "type":
                types.append(self.type(child))
        result_toks = results_node.children if results_node is not None else []
        if len(result_toks) != len(types):
            raise self.error(f"{name} names {len(result_toks)} results but gives {len(types)} types", name_tok)
        results = tuple(Value(t) for t in types)
        for tok, value in zip(result_toks, results):
            self.define(scope, tok, value)
        op = Op(name, tuple(operands), results, attrs, regions, self.loc(loc_tok))
        self.positions[id(op)] = (node.meta.line, node.meta.column)
        return op

    def region(self, node: lark.Tree) -> Region:
        scope: dict[str, Value] = {}
        args, ops = [], []
        for child in node.children:
            if child is None:
                continue
            if child.data == "arg":
                value = Value(self.type(child.children[1]))
                self.define(scope, child.children[0], value)
                args.append(value)
            elif child.data == "op":
                ops.append(self.op(child, scope))
            elif child.data == "yield_":
                ops.append(Op("yield", tuple(self.use(scope, t) for t in child.children if t is not None), ()))
        return Region(tuple(args), tuple(ops))

    @staticmethod
    def loc(token: lark.Token | None) -> Loc:
        if token is None:
            return Loc()
        m = _LOC_RE.match(str(token))
        if m is None:
            return Loc(str(token)[1:].strip())
        return Loc(m["module"] or "", m["target"] or "")

    # --- types and attributes -----------------------------------------------------------
    def type(self, node: lark.Tree) -> TensorType:
        dtype_tok, *dims = node.children
        shape = tuple(self.dim(d) for d in dims if d is not None)
        return TensorType(shape, DType(str(dtype_tok)))

    def dim(self, node: Any) -> Any:
        value = self.expr(node)
        if isinstance(value, sympy.Expr) and not value.is_Integer and value.free_symbols == set():
            raise self.error(f"dimension {value} is not an integer", node)
        return dim(value)

    def attrs(self, node: lark.Tree) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr in node.children:
            key_tok, value_node = attr.children
            if str(key_tok) in out:
                raise self.error(f"attribute {key_tok} given twice", key_tok)
            out[str(key_tok)] = self.value(value_node)
        return out

    def value(self, node: Any) -> Any:
        kind = node.data if isinstance(node, lark.Tree) else None
        if kind == "float":
            return float(node.children[0])
        if kind == "neg_float":
            return -float(node.children[0])
        if kind == "string":
            return json.loads(node.children[0])
        if kind in ("true", "false"):
            return kind == "true"
        if kind == "none":
            return None
        if kind == "dtype":
            return DType(str(node.children[0]))
        if kind == "list":
            return [self.value(v) for v in node.children if v is not None]
        value = self.expr(node)
        return int(value) if value.is_Integer else value

    def expr(self, node: Any) -> sympy.Expr:
        kind = node.data
        c = node.children
        if kind == "int":
            return sympy.Integer(int(c[0]))
        if kind == "symbol":
            return symbol(str(c[0]))
        if kind == "call":
            fn = _FUNCTIONS.get(str(c[0]))
            if fn is None:
                raise self.error(f"unknown function {c[0]} in a dimension; use one of {', '.join(_FUNCTIONS)}", c[0])
            return fn(*(self.expr(a) for a in c[1:]))
        if kind == "neg":
            return -self.expr(c[0])
        a, b = self.expr(c[0]), self.expr(c[1])
        return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b, "pow": a ** b}[kind]
