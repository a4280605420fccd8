"""The verifier rejects broken graphs and names the op, its %value and module path."""
from __future__ import annotations

import pytest

from lamina.ir import DType, Graph, GraphBuilder, Loc, Op, Param, TensorType, Value, VerifyError, verify

F4 = TensorType((4,), DType.f32)


def _graph(ops: list[Op], inputs: list[Value], outputs: list[Value], params: tuple = ()) -> Graph:
    return Graph("g", tuple(inputs), tuple(params), tuple(ops), tuple(outputs))


def test_valid_graph_passes() -> None:
    b = GraphBuilder()
    x = b.input(F4, "x")
    verify(b.build([b.emit("exp", x)]))


def test_use_before_definition() -> None:
    x, y, z = Value(F4, "x"), Value(F4), Value(F4)
    ops = [Op("exp", (y,), (z,), loc=Loc("h.0.mlp")), Op("exp", (x,), (y,))]
    with pytest.raises(VerifyError, match=r"%0 = exp \(module h.0.mlp\): operand %1 is used before it is defined"):
        verify(_graph(ops, [x], [z]))


def test_value_defined_twice() -> None:
    x, y = Value(F4, "x"), Value(F4)
    ops = [Op("exp", (x,), (y,)), Op("tanh", (x,), (y,))]
    with pytest.raises(VerifyError, match="defined more than once"):
        verify(_graph(ops, [x], [y]))


def test_wrong_result_type_names_op_value_and_module() -> None:
    x, y = Value(F4, "x"), Value(TensorType((4,), DType.f16))
    op = Op("exp", (x,), (y,), loc=Loc("encoder.layer.3", "aten.exp.default"))
    with pytest.raises(VerifyError) as info:
        verify(_graph([op], [x], [y]))
    message = str(info.value)
    assert "%0 = exp" in message and "encoder.layer.3" in message and "f16[4]" in message
    assert info.value.op is op


def test_dtype_mismatch_asks_for_a_cast() -> None:
    x, n, y = Value(F4, "x"), Value(TensorType((4,), DType.i64), "n"), Value(F4)
    with pytest.raises(VerifyError, match="insert a cast"):
        verify(_graph([Op("add", (x, n), (y,))], [x, n], [y]))


def test_missing_attributes_are_rejected() -> None:
    x, y = Value(F4, "x"), Value(F4)
    with pytest.raises(VerifyError, match="needs attribute 'dim'"):
        verify(_graph([Op("softmax", (x,), (y,))], [x], [y]))


def test_yield_outside_region() -> None:
    x = Value(F4, "x")
    with pytest.raises(VerifyError, match="yield may only end a region"):
        verify(_graph([Op("yield", (x,), ())], [x], [x]))


def test_fused_region_must_end_in_yield() -> None:
    from lamina.ir import Region

    x, a, b, y = Value(F4, "x"), Value(F4), Value(F4), Value(F4)
    region = Region((a,), (Op("exp", (a,), (b,)),))
    with pytest.raises(VerifyError, match="must end with yield"):
        verify(_graph([Op("fused", (x,), (y,), regions=(region,))], [x], [y]))


def test_unknown_op() -> None:
    x, y = Value(F4, "x"), Value(F4)
    with pytest.raises(VerifyError, match="unknown op 'frobnicate'"):
        verify(_graph([Op("frobnicate", (x,), (y,))], [x], [y]))


def test_duplicate_parameter_keys() -> None:
    w1, w2 = Value(F4, "w"), Value(F4, "w")
    with pytest.raises(VerifyError, match="parameter 'w' is declared twice"):
        verify(_graph([], [], [w1], params=(Param("w", w1), Param("w", w2))))


def test_undefined_output() -> None:
    x = Value(F4, "x")
    with pytest.raises(VerifyError, match="return uses"):
        verify(_graph([], [x], [Value(F4)]))


def test_undeclared_parameter_value() -> None:
    x, w, y = Value(F4, "x"), Value(F4, "w"), Value(F4)
    with pytest.raises(VerifyError, match="used before it is defined"):
        verify(_graph([Op("add", (x, w), (y,))], [x], [y]))
