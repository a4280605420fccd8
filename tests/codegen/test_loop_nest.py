"""Loops over flattened 2-d ranges run as two nested loops (codegen/loop_nest.py), loops split where
affine comparisons of their index flip (codegen/loop_split.py), and loops versioned on the guard terms
that do not depend on them (codegen/guarded_loads.py): each computes what the original loop computes."""
from __future__ import annotations

from lamina.codegen.guarded_loads import invariant_guard_terms
from lamina.codegen.kernel import Call, Const, Expr, Let, Load, Loop, LoopVar, Reduce, Store, Var, const
from lamina.codegen.loop_nest import nested, row_divisor
from lamina.codegen.loop_split import pieces, split_points
from lamina.ir.dtypes import DType

I64, F32, BOOL = DType.i64, DType.f32, DType.bool


def _call(op: str, *args: Expr, dtype: DType = I64) -> Call:
    return Call(dtype, op, args)


def _evaluate(e: Expr, env: dict) -> float:
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        return env[e.name]
    if isinstance(e, Load):
        return env[e.buffer][int(_evaluate(e.index, env))]
    if e.op == "where":  # the unselected side is not evaluated (it may read out of range)
        return _evaluate(e.args[1] if _evaluate(e.args[0], env) else e.args[2], env)
    a = [_evaluate(x, env) for x in e.args]
    return {"add": lambda: a[0] + a[1], "sub": lambda: a[0] - a[1], "mul": lambda: a[0] * a[1],
            "floordiv": lambda: a[0] // a[1], "mod": lambda: a[0] % a[1], "lt": lambda: a[0] < a[1],
            "ge": lambda: a[0] >= a[1], "logical_and": lambda: a[0] and a[1]}[e.op]()


def _run(body: tuple, env: dict, out: dict) -> None:
    """Executes loops, lets and stores (what these tests build), writing stores into ``out``."""
    for s in body:
        if isinstance(s, Let):
            env[s.name] = _evaluate(s.value, env)
        elif isinstance(s, Store):
            out[(s.buffer, _evaluate(s.index, env))] = _evaluate(s.value, env)
        elif isinstance(s, Loop):
            for i in range(int(_evaluate(s.extent, env))):
                _run(s.body, {**env, s.var: i}, out)


def _flattened_loop() -> Loop:
    r = LoopVar(I64, "r", 12 * 10)
    row, col = _call("floordiv", r, const(10)), _call("mod", r, const(10))
    return Loop("r", const(120), (
        Let("scale", Load(F32, "w", Var(I64, "o"))),          # depends on neither index: hoisted
        Let("h", row),
        Let("v", _call("add", _call("mul", Var(I64, "h"), const(100)), col)),
        Store("out", _call("add", _call("mul", Var(I64, "o"), const(120)), r),
              _call("mul", Var(I64, "v"), Var(F32, "scale"), dtype=F32))))


def test_a_flattened_loop_runs_as_rows_and_computes_the_same() -> None:
    loop = _flattened_loop()
    assert row_divisor(loop) == 10
    rows = nested(loop)
    assert rows is not None and rows.extent == const(12)
    assert isinstance(rows.body[0], Let) and rows.body[0].name == "scale"  # once per row
    inner = rows.body[-1]
    assert isinstance(inner, Loop) and inner.extent == const(10)
    assert "floordiv" not in repr(inner.body) and "mod" not in repr(inner.body)
    env = {"o": 1, "w": [0.0, 3.0]}
    want, got = {}, {}
    _run((loop,), dict(env), want)
    _run((rows,), dict(env), got)
    assert got == want and len(got) == 120


def test_loops_without_one_exact_divisor_stay_whole() -> None:
    r = LoopVar(I64, "r", 120)
    two = Loop("r", const(120), (Store("out", r, _call("add", _call("floordiv", r, const(10)),
                                                          _call("mod", r, const(12)))),))
    assert nested(two) is None  # two divisors
    ragged = Loop("r", const(125), (Store("out", r, _call("floordiv", r, const(10))),))
    assert nested(ragged) is None  # 125 is no multiple of 10
    dynamic = Loop("r", Var(I64, "n"), (Store("out", r, _call("floordiv", r, const(10))),))
    assert nested(dynamic) is None


def test_lets_reading_what_the_loop_writes_or_its_sums_stay_inside() -> None:
    r = LoopVar(I64, "r", 40)
    loop = Loop("r", const(40), (
        Let("a", Load(F32, "out", Var(I64, "o"))),  # reads the buffer the loop writes: not hoisted
        Reduce("acc", "sum", F32, "k", const(3), (), Load(F32, "x", Var(I64, "k"))),
        Let("b", _call("mul", Var(F32, "acc"), Const(F32, 2.0), dtype=F32)),  # uses the sum: not hoisted
        Store("out", _call("floordiv", r, const(8)), _call("add", Var(F32, "a"), Var(F32, "b"), dtype=F32))))
    rows = nested(loop)
    assert rows is not None and len(rows.body) == 1 and isinstance(rows.body[0], Loop)


def test_affine_comparisons_split_where_they_flip() -> None:
    """A stride-2 window's last column: 2 * j + 2 < 112 holds for j < 55."""
    j = LoopVar(I64, "j", 56)
    column = _call("add", _call("mul", j, const(2)), const(2))
    loop = Loop("j", const(56), (
        Let("c", column),
        Let("inside", _call("lt", Var(I64, "c"), const(112), dtype=BOOL)),
        Store("out", j, _call("where", Var(BOOL, "inside"), Load(F32, "x", Var(I64, "c")), Const(F32, 0.0),
                              dtype=F32))))
    assert split_points(loop) == []  # not a plain comparison of j
    assert split_points(loop, affine=True) == [55]
    x = [float(i) for i in range(112)]
    want, got = {}, {}
    _run((loop,), {"x": x}, want)
    for start, stop, body in pieces(loop, affine=True):
        for i in range(start, stop):
            _run(body, {"x": x, "j": i}, got)
    assert got == want
    (_, _, first), _ = pieces(loop, affine=True)
    assert "where" not in repr(first)  # the guard is decided in the first piece


def test_reversed_and_negative_affine_comparisons() -> None:
    j = LoopVar(I64, "j", 20)

    def loop(compare: Call) -> Loop:
        return Loop("j", const(20), (Store("out", j, _call("where", compare, Const(F32, 1.0), Const(F32, 0.0),
                                                           dtype=F32)),))

    assert split_points(loop(_call("ge", _call("sub", _call("mul", j, const(3)), const(1)), const(0), dtype=BOOL)),
                        affine=True) == [1]   # 3j - 1 >= 0 from j = 1
    assert split_points(loop(_call("lt", const(10), _call("mul", j, const(2)), dtype=BOOL)),
                        affine=True) == [6]   # 10 < 2j from j = 6
    assert split_points(loop(_call("lt", _call("sub", const(7), j), const(0), dtype=BOOL)),
                        affine=True) == [8]   # 7 - j < 0 from j = 8


def test_a_loop_is_versioned_on_the_guard_terms_it_does_not_change() -> None:
    j, o = LoopVar(I64, "j", 56), Var(I64, "o")
    row_inside = _call("lt", _call("add", o, const(1)), const(56), dtype=BOOL)
    column_inside = _call("lt", _call("add", j, const(1)), const(56), dtype=BOOL)
    guard = _call("logical_and", row_inside, column_inside, dtype=BOOL)
    body = (Store("out", j, _call("where", guard, Load(F32, "x", _call("add", j, const(1))), Const(F32, 0.0),
                                  dtype=F32)),)
    assert invariant_guard_terms("j", body, {}, frozenset()) == [row_inside]
    assert invariant_guard_terms("j", body, {}, frozenset({row_inside})) == []  # known inside the version
