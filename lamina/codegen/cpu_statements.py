"""The statement walk both CPU kernel printers share (Numba's Python and C), with per-language spellings.

What the two decide alike: a loop along a concatenation runs one loop per piece (``loop_split.py``),
a loop over a flattened 2-d range may run as two nested loops (``loop_nest.py``, C only for now),
a short loop dividing by row constants is versioned to multiply by their reciprocals where those are
normal numbers (``reciprocal.py``), and every other loop runs as written. A language gives its
spelling of a binding, a store, a counted loop, an if/else, and the reciprocal's range test.
"""
from __future__ import annotations

from .kernel import Let, Loop, Reduce, Store, Var
from .loop_nest import nested
from .loop_split import pieces, split_points
from .reciprocal import invariant_divisors, multiply_by_inverses
from .scalar_printer import ScalarPrinter


class CpuStatementPrinter(ScalarPrinter):
    indent = "    "
    nest_divided_loops = False  # run a loop over a flattened 2-d range as two (codegen/loop_nest.py)
    affine_splits = False  # split loops where affine comparisons of their index flip (a window's edges)

    def let(self, s: Let) -> str:
        raise NotImplementedError

    def store(self, s: Store) -> str:
        raise NotImplementedError

    def for_range(self, var: str, start: str | None, stop: str) -> tuple[str, str | None]:
        """The opening line of a loop of ``var`` over ``[start, stop)`` (``start`` None: from 0) and its
        closing line (or None)."""
        raise NotImplementedError

    def branches(self, tests: list[str]) -> tuple[str, str, str | None]:
        """``if`` all ``tests`` hold / ``else`` / the closing line (or None)."""
        raise NotImplementedError

    def inverse(self, d: Var) -> tuple[str, str]:
        """The binding of ``1 / d`` (named ``reciprocal.inverse_name(d)``) and the test that ``d`` lies in
        ``reciprocal.SAFE_RANGE``."""
        raise NotImplementedError

    def reduce(self, s: Reduce, depth: int, out: list[str]) -> None:
        raise NotImplementedError

    def stmts(self, body: tuple, depth: int, out: list[str]) -> None:
        pad = self.indent * depth
        for s in body:
            if isinstance(s, Let):
                out.append(pad + self.let(s))
            elif isinstance(s, Store):
                out.append(pad + self.store(s))
            elif isinstance(s, Loop) and self.nest_divided_loops and nested(s) is not None:
                self.stmts((nested(s),), depth, out)
            elif isinstance(s, Loop) and invariant_divisors(s):
                self.versioned_loop(s, invariant_divisors(s), depth, out)
            elif isinstance(s, Loop) and split_points(s, self.affine_splits):  # one loop per piece
                for start, stop, piece in pieces(s, self.affine_splits):
                    self.counted_loop(s.var, str(start), str(stop), piece, depth, out)
            elif isinstance(s, Loop):
                self.counted_loop(s.var, None, self.expr(s.extent), s.body, depth, out)
            elif isinstance(s, Reduce):
                self.reduce(s, depth, out)

    def counted_loop(self, var: str, start: str | None, stop: str, body: tuple, depth: int, out: list[str]) -> None:
        pad = self.indent * depth
        opening, closing = self.for_range(var, start, stop)
        out.append(pad + opening)
        self.stmts(body, depth + 1, out)
        if closing is not None:
            out.append(pad + closing)

    def versioned_loop(self, loop: Loop, divisors: list[Var], depth: int, out: list[str]) -> None:
        """``loop`` multiplying by its row-constant divisors' reciprocals when they are safe, else
        dividing (codegen/reciprocal.py)."""
        pad = self.indent * depth
        tests = []
        for d in divisors:
            binding, test = self.inverse(d)
            out.append(pad + binding)
            tests.append(test)
        if_line, else_line, closing = self.branches(tests)
        extent = self.expr(loop.extent)
        out.append(pad + if_line)
        self.counted_loop(loop.var, None, extent, multiply_by_inverses(loop.body, divisors), depth + 1, out)
        out.append(pad + else_line)
        self.counted_loop(loop.var, None, extent, loop.body, depth + 1, out)
        if closing is not None:
            out.append(pad + closing)
