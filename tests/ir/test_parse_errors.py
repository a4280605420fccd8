"""Malformed IR text fails with the line, the column and what was expected."""
from __future__ import annotations

import pytest

from lamina.ir import IRParseError, parse

GOOD = """graph @f(%x: f32[4]) {
  %0 = exp(%x) : f32[4]
  return %0
}
"""


def _error(text: str) -> IRParseError:
    with pytest.raises(IRParseError) as info:
        parse(text)
    return info.value


def test_good_text_parses() -> None:
    assert str(parse(GOOD)) == GOOD


@pytest.mark.parametrize("text, line, column, fragment", [
    (GOOD.replace("exp(%x)", "exp(%x"), 2, 15, "expected"),
    (GOOD.replace(": f32[4]\n  return", ": f32[4\n  return"), 3, 3, "']'"),
    (GOOD.replace("f32[4]) {", "f33[4]) {"), 1, 14, "unexpected"),
    (GOOD.replace("%0 = exp", "%0 = expo"), 2, 8, "unknown op 'expo'"),
    (GOOD.replace("exp(%x)", "exp(%y)"), 2, 12, "%y is used but not defined"),
    (GOOD.replace("return %0", "return %1"), 3, 10, "%1 is used but not defined"),
    (GOOD.replace("%0 = exp(%x) : f32[4]", "%0 = exp(%x) : f32[4]\n  %0 = exp(%x) : f32[4]"), 3, 3, "defined twice"),
    (GOOD.replace("exp(%x) : f32[4]", "exp(%x) : f32[5]"), 2, 3, "differ from the inferred f32[4]"),
    (GOOD.replace("exp(%x) : f32[4]", "exp(%x) {dims=[1]} : f32[4]"), 2, 3, "has no attribute 'dims'"),
    (GOOD.replace("exp(%x) : f32[4]", "sum(%x) : f32[]"), 2, 3, "needs attribute 'dims'"),
    (GOOD.replace("exp(%x) : f32[4]", "exp(%x, %x) : f32[4]"), 2, 3, "takes 1 operands"),
    (GOOD.replace("}\n", ""), 3, 10, "end of input"),
    (GOOD.replace("%0 = exp(%x) : f32[4]", "%0 = exp(%x) : f32[4] $"), 2, 25, "unexpected character '$'"),
])
def test_malformed_text_is_located(text: str, line: int, column: int, fragment: str) -> None:
    error = _error(text)
    assert (error.line, error.column) == (line, column), str(error)
    assert fragment in str(error)
    assert f"line {line}, column {column}" in str(error)


def test_error_shows_the_line_with_a_caret() -> None:
    error = _error(GOOD.replace("exp(%x)", "exp(%x"))
    lines = str(error).splitlines()
    assert lines[1].strip() == "%0 = exp(%x : f32[4]"
    assert lines[2].index("^") - lines[1].index("%0") == 12


def test_region_cannot_see_outer_values() -> None:
    text = """graph @f(%x: f32[4]) {
  %0 = fused(%x) {
  ^(%a: f32[4]):
    %1 = add(%a, %x) : f32[4]
    yield %1
  } : f32[4]
  return %0
}
"""
    error = _error(text)
    assert error.line == 4 and "%x is used but not defined" in str(error)


def test_region_must_yield_operand_types() -> None:
    text = """graph @f(%x: f32[4]) {
  %0 = fused(%x) {
  ^(%a: f32[5]):
    yield %a
  } : f32[5]
  return %0
}
"""
    error = _error(text)
    assert error.line == 2 and "region arguments (f32[5]) do not match operands (f32[4])" in str(error)


def test_results_and_types_must_match_in_number() -> None:
    error = _error(GOOD.replace("%0 = exp(%x) : f32[4]", "%0, %1 = exp(%x) : f32[4]"))
    assert error.line == 2 and "names 2 results but gives 1 types" in str(error)
