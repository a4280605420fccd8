"""Index-set splitting (codegen/loop_split.py): a concat along a kernel's inner loop runs as one loop per
piece, with no selects or clamps left, and computes exactly what torch does."""
from __future__ import annotations

import pytest
import torch

import lamina
from lamina.codegen.kernel import Call, Const, Let, Load, Loop, Store, Var, const, walk
from lamina.codegen.loop_split import pieces, split_points
from lamina.ir.dtypes import DType


class RotateHalf(torch.nn.Module):
    """Rotary embeddings' rotate_half: cat(-x2, x1) * sin + x * cos."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class ThreePieces(torch.nn.Module):
    """A concat of three pieces of unequal width (one of width 1) and a reversed comparison."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat((x[..., :1].exp(), y * 2, x[..., 1:] - 1), dim=-1) + 0.5


def _sources(compiled) -> str:
    return "".join(compiled._executor.sources().values())


def test_rotate_half_is_two_loops_without_selects() -> None:
    torch.manual_seed(0)
    x, cos, sin = torch.randn(2, 4, 16, 64), torch.randn(16, 64), torch.randn(16, 64)
    compiled = lamina.compile(RotateHalf(), (x, cos, sin), poison=True, kernel_language="numba")  # its source
    torch.testing.assert_close(compiled(x, cos, sin), RotateHalf()(x, cos, sin), rtol=1e-6, atol=1e-6)
    source = _sources(compiled)
    assert "for j in range(0, 32):" in source and "for j in range(32, 64):" in source
    assert " if " not in source.split("def k_")[1]  # no select left in the kernel


@pytest.mark.parametrize("width", [1, 7, 40])
def test_three_unequal_pieces(width: int) -> None:
    torch.manual_seed(width)
    x, y = torch.randn(3, 5, width + 1), torch.randn(3, 5, 9)
    compiled = lamina.compile(ThreePieces(), (x, y), poison=True)
    torch.testing.assert_close(compiled(x, y), ThreePieces()(x, y), rtol=1e-6, atol=1e-6)


def _concat_loop(n: int, cut: int, compare: Call) -> Loop:
    j = Var(DType.i64, "j")
    clamp = Call(DType.i64, "min", (Call(DType.i64, "max", (Call(DType.i64, "sub", (j, const(cut))), const(0))),
                                    const(n - cut - 1)))
    body = (Let("c", compare),
            Let("a", Load(DType.f32, "x", j)),
            Let("b", Load(DType.f32, "y", clamp)),
            Store("out", j, Call(DType.f32, "where", (Var(DType.bool, "c"), Var(DType.f32, "a"),
                                                      Var(DType.f32, "b")))))
    return Loop("j", const(n), body)


def test_each_piece_keeps_only_its_own_loads_and_no_clamps() -> None:
    j = Var(DType.i64, "j")
    loop = _concat_loop(10, 4, Call(DType.bool, "lt", (j, const(4))))
    (a0, b0, first), (a1, b1, second) = pieces(loop)
    assert (a0, b0, a1, b1) == (0, 4, 4, 10)
    assert {e.buffer for s in first for e in walk(s.value if isinstance(s, (Let, Store)) else s)
            if isinstance(e, Load)} == {"x"}
    names = {e.op for s in second if isinstance(s, (Let, Store)) for e in walk(s.value) if isinstance(e, Call)}
    assert not names & {"min", "max", "where"}  # j - 4 lies inside the clamp for j in [4, 9]


def test_reversed_and_inclusive_comparisons_split_where_they_flip() -> None:
    j = Var(DType.i64, "j")
    assert split_points(_concat_loop(10, 4, Call(DType.bool, "gt", (const(4), j)))) == [4]   # 4 > j
    assert split_points(_concat_loop(10, 4, Call(DType.bool, "le", (j, const(4))))) == [5]   # j <= 4
    assert split_points(_concat_loop(10, 4, Call(DType.bool, "lt", (j, const(0))))) == []    # never flips inside
    assert split_points(_concat_loop(10, 4, Call(DType.bool, "lt", (j, Var(DType.i64, "n"))))) == []  # not a constant
    dynamic = Loop("j", Var(DType.i64, "n"), _concat_loop(10, 4, Call(DType.bool, "lt", (j, const(4)))).body)
    assert split_points(dynamic) == []


def test_undecided_comparisons_are_kept() -> None:
    """A comparison with another variable is not decided by j's range: it stays as it was."""
    j, k = Var(DType.i64, "j"), Var(DType.i64, "k")
    loop = Loop("j", const(8), (Let("c", Call(DType.bool, "lt", (j, const(3)))),
                                Let("d", Call(DType.bool, "lt", (k, j))),
                                Store("out", j, Call(DType.f32, "where", (Var(DType.bool, "d"), Const(DType.f32, 1.0),
                                                                          Const(DType.f32, 0.0))))))
    for _, _, body in pieces(loop):
        assert [s.name for s in body if isinstance(s, Let)] == ["d"]
        assert body[0].value == Call(DType.bool, "lt", (k, j))
