"""Per-op lowering of lamina ops to MLIR (linalg.generic + arith/math, tensor); used by ``mlir.to_mlir``."""
from __future__ import annotations

import math as pymath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .core import Graph, Op
from .dtypes import DType
from .mlir import MLIRExportError, element_type, static_shape
from .opdef import Category
from .ops import category, is_terminator, lookup
from .ops.window import pair
from .scalar import ScalarOps
from .targets import OpTable


@dataclass(frozen=True)
class T:
    """An MLIR tensor value with its static shape and lamina dtype."""

    value: Any
    shape: tuple[int, ...]
    dtype: DType


MLIR: OpTable[Callable[..., Any]] = OpTable("mlir", error=MLIRExportError)  # op -> method(lowering, op, *operands)
SCALAR: OpTable[Callable[..., Any]] = OpTable("mlir", "scalar lowering", error=MLIRExportError)  # primitives


class Lowering:
    def __init__(self, ir: Any, graph: Graph) -> None:
        from iree.compiler.dialects import arith, func, linalg, tensor
        from iree.compiler.dialects import math as mmath

        self.ir, self.graph = ir, graph
        self.arith, self.func, self.linalg, self.tensor, self.math = arith, func, linalg, tensor, mmath
        self.values: dict[int, T] = {}
        self.op: Op | None = None

    # ---- module structure -----------------------------------------------------------------
    def ttype(self, shape: Sequence[int], dtype: DType) -> Any:
        return self.ir.RankedTensorType.get(list(shape), element_type(self.ir, dtype))

    def emit_function(self, module: Any) -> None:
        ir, g = self.ir, self.graph
        args = list(g.inputs) + [p.value for p in g.params]
        arg_types = [self.ttype(static_shape(None, v.type.shape), v.type.dtype) for v in args]
        out_types = [self.ttype(static_shape(None, v.type.shape), v.type.dtype) for v in g.outputs]
        with ir.InsertionPoint(module.body):
            fn = self.func.FuncOp(g.name, (arg_types, out_types))
            entry = fn.add_entry_block()
            attrs = [ir.DictAttr.get({"lamina.input": ir.StringAttr.get(v.hint or f"arg{i}")})
                     for i, v in enumerate(g.inputs)]
            attrs += [ir.DictAttr.get({"lamina.param": ir.StringAttr.get(p.key)}) for p in g.params]
            fn.arg_attrs = ir.ArrayAttr.get(attrs)
            with ir.InsertionPoint(entry):
                for v, block_arg in zip(args, entry.arguments):
                    self.values[id(v)] = T(block_arg, tuple(v.type.shape), v.type.dtype)
                self.lower_ops(g.ops)
                self.func.ReturnOp([self.values[id(v)].value for v in g.outputs])

    def lower_ops(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if is_terminator(op):
                continue
            self.op = op
            lower = self.lowering(op)
            for v in op.results:
                static_shape(op, v.type.shape)
            out = lower(self, op, *[self.values[id(v)] for v in op.operands])
            results = list(out) if isinstance(out, (list, tuple)) else [out]
            for v, t in zip(op.results, results):
                self.values[id(v)] = t

    @staticmethod
    def lowering(op: Op) -> Callable[..., Any]:
        if op.name in MLIR:
            return MLIR.get(op.name)
        if category(op.name) is Category.ELEMENTWISE:
            formula = lookup(op.name).scalar
            if formula is not None or op.name in SCALAR:
                return Lowering.op_elementwise
        reason = NOT_EXPORTED.get(op.name, "not supported yet")
        raise MLIRExportError(f"MLIR export of {op.describe()}: {reason}")

    # ---- building blocks ------------------------------------------------------------------
    def d(self, i: int) -> Any:
        return self.ir.AffineDimExpr.get(i)

    def c0(self) -> Any:
        return self.ir.AffineConstantExpr.get(0)

    def identity_exprs(self, n: int) -> list[Any]:
        return [self.d(i) for i in range(n)]

    def floordiv(self, expr: Any, n: int) -> Any:
        return self.ir.AffineFloorDivExpr.get(expr, self.ir.AffineConstantExpr.get(n))

    def bcast_exprs(self, shape: Sequence[int], out: Sequence[int], first_loop: int = 0) -> list[Any]:
        """Index exprs that broadcast ``shape`` against ``out`` (right-aligned), whose dims start at ``first_loop``."""
        off = len(out) - len(shape)
        return [self.c0() if s == 1 and out[i + off] != 1 else self.d(first_loop + i + off) for i, s in enumerate(shape)]

    def generic(self, inputs: Sequence[tuple[T, list[Any]]], outputs: Sequence[tuple[Any, list[Any], Sequence[int], DType]],
                loops: int, body: Callable[[list[Any]], list[Any]], reductions: Sequence[int] = ()) -> list[T]:
        """One linalg.generic; ``outputs`` are (init or None, exprs, shape, dtype)."""
        ir, linalg = self.ir, self.linalg
        inits = [init if init is not None else self.tensor.EmptyOp(list(shape), element_type(ir, dt)).result
                 for init, _, shape, dt in outputs]
        maps = [ir.AffineMap.get(loops, 0, exprs) for _, exprs in inputs]
        maps += [ir.AffineMap.get(loops, 0, exprs) for _, exprs, _, _ in outputs]
        kinds = ["reduction" if i in reductions else "parallel" for i in range(loops)]
        iters = ir.ArrayAttr.get([ir.Attribute.parse(f"#linalg.iterator_type<{k}>") for k in kinds])
        op = linalg.GenericOp([self.ttype(s, dt) for _, _, s, dt in outputs], [t.value for t, _ in inputs], inits,
                              ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps]), iters)
        elts = [element_type(ir, t.dtype) for t, _ in inputs] + [element_type(ir, dt) for *_, dt in outputs]
        block = op.regions[0].blocks.append(*elts)
        with ir.InsertionPoint(block):
            linalg.YieldOp(body(list(block.arguments)))
        return [T(r, tuple(s), dt) for r, (_, _, s, dt) in zip(op.results, outputs)]

    def ew(self, fn: Callable[..., Any], inputs: Sequence[T | tuple[T, list[Any]]], shape: Sequence[int], dtype: DType) -> T:
        """Elementwise map with broadcasting; an input may carry explicit index exprs."""
        pairs = [x if isinstance(x, tuple) else (x, self.bcast_exprs(x.shape, shape)) for x in inputs]
        out = (None, self.identity_exprs(len(shape)), shape, dtype)
        return self.generic(pairs, [out], len(shape), lambda a: [fn(*a[:-1])])[0]

    def fill(self, value: Any, shape: Sequence[int], dtype: DType) -> T:
        ir = self.ir
        attr = self.scalar_attr(value, dtype)
        dense = ir.DenseElementsAttr.get_splat(self.ttype(shape, dtype), attr)
        return T(self.arith.ConstantOp(self.ttype(shape, dtype), dense).result, tuple(shape), dtype)

    def scalar_attr(self, value: Any, dtype: DType) -> Any:
        ir = self.ir
        elt = element_type(ir, dtype)
        if dtype.is_float:
            return ir.FloatAttr.get(elt, float(value))
        return ir.IntegerAttr.get(elt, int(bool(value)) if dtype is DType.bool else int(value))

    def const(self, value: Any, dtype: DType) -> Any:
        return self.arith.ConstantOp(element_type(self.ir, dtype), self.scalar_attr(value, dtype)).result

    def reduce(self, x: T, dims: Sequence[int], combine: Callable[[Any, Any], Any], start: Any) -> T:
        """Reduce ``dims`` away (no keepdim); ``start`` is the identity of ``combine``."""
        shape = tuple(s for i, s in enumerate(x.shape) if i not in dims)
        init = self.fill(start, shape, x.dtype).value
        out_exprs = [self.d(i) for i in range(len(x.shape)) if i not in dims]
        return self.generic([(x, self.identity_exprs(len(x.shape)))], [(init, out_exprs, shape, x.dtype)],
                            len(x.shape), lambda a: [combine(a[0], a[1])], reductions=dims)[0]

    def kept(self, reduced: T, full_rank: int, dims: Sequence[int]) -> tuple[T, list[Any]]:
        """A reduced tensor indexed against the full loop space (keepdim without a reshape)."""
        return reduced, [self.d(i) for i in range(full_rank) if i not in dims]

    def reshape(self, x: T, shape: Sequence[int]) -> T:
        ir = self.ir
        i64 = ir.IntegerType.get_signless(64)
        shape_type = ir.RankedTensorType.get([len(shape)], i64)
        shape_attr = ir.DenseElementsAttr.get(np.array(list(shape), dtype=np.int64), type=shape_type)
        shape_value = self.arith.ConstantOp(shape_type, shape_attr).result
        return T(self.tensor.ReshapeOp(self.ttype(shape, x.dtype), x.value, shape_value).result, tuple(shape), x.dtype)

    def index(self, loop: int) -> Any:
        return self.linalg.IndexOp(loop).result

    def as_index(self, v: Any) -> Any:
        return self.arith.IndexCastOp(self.ir.IndexType.get(), v).result

    # ---- scalar arithmetic --------------------------------------------------------------
    def add(self, a: Any, b: Any, dt: DType) -> Any:
        return (self.arith.AddFOp if dt.is_float else self.arith.AddIOp)(a, b).result

    def mul(self, a: Any, b: Any, dt: DType) -> Any:
        return (self.arith.MulFOp if dt.is_float else self.arith.MulIOp)(a, b).result

    def sub(self, a: Any, b: Any, dt: DType) -> Any:
        return (self.arith.SubFOp if dt.is_float else self.arith.SubIOp)(a, b).result

    def div(self, a: Any, b: Any) -> Any:
        return self.arith.DivFOp(a, b).result

    def max(self, a: Any, b: Any, dt: DType) -> Any:
        return (self.arith.MaximumFOp if dt.is_float else self.arith.MaxSIOp)(a, b).result

    def min(self, a: Any, b: Any, dt: DType) -> Any:
        return (self.arith.MinimumFOp if dt.is_float else self.arith.MinSIOp)(a, b).result

    def cmp(self, pred: str, a: Any, b: Any, dt: DType) -> Any:
        if dt.is_float:
            fp = {"eq": "OEQ", "ne": "UNE", "lt": "OLT", "le": "OLE", "gt": "OGT", "ge": "OGE"}[pred]
            return self.arith.CmpFOp(getattr(self.arith.CmpFPredicate, fp), a, b).result
        signed = "u" if dt in (DType.bool, DType.u8) else "s"
        ip = {"eq": "eq", "ne": "ne", "lt": f"{signed}lt", "le": f"{signed}le", "gt": f"{signed}gt", "ge": f"{signed}ge"}[pred]
        return self.arith.CmpIOp(getattr(self.arith.CmpIPredicate, ip), a, b).result

    def select(self, c: Any, a: Any, b: Any) -> Any:
        return self.arith.SelectOp(c, a, b).result

    def exp(self, x: Any) -> Any:
        return self.math.ExpOp(x).result

    def cast(self, x: Any, src: DType, dst: DType) -> Any:
        a, elt = self.arith, element_type(self.ir, dst)
        if src == dst:
            return x
        if dst is DType.bool:
            zero = self.const(0, src)
            return self.cmp("ne", x, zero, src)
        if src.is_float and dst.is_float:
            wider = _bits(dst) > _bits(src)
            return (a.ExtFOp if wider else a.TruncFOp)(elt, x).result
        if src.is_float:
            return (a.FPToUIOp if dst is DType.u8 else a.FPToSIOp)(elt, x).result
        if dst.is_float:
            return (a.UIToFPOp if src in (DType.bool, DType.u8) else a.SIToFPOp)(elt, x).result
        if _bits(dst) > _bits(src):
            return (a.ExtUIOp if src in (DType.bool, DType.u8) else a.ExtSIOp)(elt, x).result
        return a.TruncIOp(elt, x).result

    def scalar(self, op: Op, args: list[Any]) -> Any:
        """The scalar body of elementwise op ``op``: a primitive, or a composite's formula over primitives."""
        dt = op.operands[-1].type.dtype if op.operands else op.result.type.dtype
        formula = lookup(op.name).scalar
        if formula is not None:
            return formula(self.scalar_ops(dt), *args, **op.attrs)
        return SCALAR.get(op.name, op.describe())(self, args, dict(op.attrs), dt)

    def scalar_ops(self, dt: DType) -> ScalarOps:
        """Scalar formulas as arith/math values of ``dt``."""
        return ScalarOps(lambda name, args, attrs: SCALAR.get(name)(self, list(args), attrs, dt),
                         lambda value: self.const(value, dt))

    # floor_divide / remainder (sign of the divisor) / fmod (sign of the dividend), as torch computes them.
    # An integer zero divisor is undefined behaviour in MLIR: lamina's kernels check it, the export does not.
    def fmod(self, x: Any, y: Any, dt: DType) -> Any:
        return (self.arith.RemFOp if dt.is_float else self.arith.RemSIOp)(x, y).result  # C's fmod

    def _signs_differ(self, rem: Any, y: Any, dt: DType) -> Any:
        """Where the C remainder is nonzero and its sign differs from the divisor's."""
        a, zero = self.arith, self.const(0, dt)
        return a.AndIOp(self.cmp("ne", rem, zero, dt),
                        a.XOrIOp(self.cmp("lt", rem, zero, dt), self.cmp("lt", y, zero, dt)).result).result

    def remainder(self, x: Any, y: Any, dt: DType) -> Any:
        rem = self.fmod(x, y, dt)
        return self.select(self._signs_differ(rem, y, dt), self.add(rem, y, dt), rem)

    def floor_divide(self, x: Any, y: Any, dt: DType) -> Any:
        if not dt.is_float:
            return self.arith.FloorDivSIOp(x, y).result
        rem = self.fmod(x, y, dt)
        quotient = self.div(self.sub(x, rem, dt), y)  # exact: x - rem is a multiple of y
        quotient = self.select(self._signs_differ(rem, y, dt), self.sub(quotient, self.const(1.0, dt), dt), quotient)
        return self.math.FloorOp(quotient).result

    # ---- op lowerings ---------------------------------------------------------------------
    def op_elementwise(self, op: Op, *xs: T) -> T:
        out = op.result.type
        return self.ew(lambda *a: self.scalar(op, list(a)), xs, out.shape, out.dtype)

    @MLIR.register("fused")
    def op_fused(self, op: Op, *xs: T) -> list[T]:
        """A kernel's region, inlined: MLIR fuses linalg ops itself."""
        region = op.regions[0]
        for arg, x in zip(region.args, xs):
            self.values[id(arg)] = x
        self.lower_ops(region.ops)
        return [self.values[id(v)] for v in region.results]

    @MLIR.register("identity", "dropout")
    def op_identity(self, op: Op, x: T) -> T:
        return x

    @MLIR.register("full")
    def op_full(self, op: Op) -> T:
        a = op.attrs
        return self.fill(a["value"], a["shape"], a["dtype"])

    @MLIR.register("constant")
    def op_constant(self, op: Op) -> T:
        a = op.attrs
        shape, dtype = tuple(a["shape"]), a["dtype"]
        values = np.array(a["value"], dtype=dtype.numpy).reshape(shape)
        dense = self.ir.DenseElementsAttr.get(values, type=self.ttype(shape, dtype))
        return T(self.arith.ConstantOp(self.ttype(shape, dtype), dense).result, shape, dtype)

    @MLIR.register("arange")
    def op_arange(self, op: Op) -> T:
        a, out = op.attrs, op.result.type
        i64 = self.ir.IntegerType.get_signless(64)

        def body(args: list[Any]) -> list[Any]:
            i = self.arith.IndexCastOp(i64, self.index(0)).result
            return [self.add(self.mul(i, self.const(a["step"], DType.i64), DType.i64), self.const(a["start"], DType.i64), DType.i64)]

        return self.generic([], [(None, [self.d(0)], out.shape, DType.i64)], 1, body)[0]

    def _reduction(self, op: Op, x: T, combine: Callable[[Any, Any], Any], start: Any) -> T:
        dims = sorted(d % len(x.shape) for d in op.attrs["dims"]) or list(range(len(x.shape)))
        out = self.reduce(x, dims, combine, start)
        return self.reshape(out, op.result.type.shape) if op.attrs["keepdim"] else out

    @MLIR.register("sum")
    def op_sum(self, op: Op, x: T) -> T:
        return self._reduction(op, x, lambda v, acc: self.add(v, acc, x.dtype), 0)

    @MLIR.register("amax")
    def op_amax(self, op: Op, x: T) -> T:
        low = -pymath.inf if x.dtype.is_float else -(2 ** 63) if x.dtype is DType.i64 else -(2 ** 31)
        return self._reduction(op, x, lambda v, acc: self.max(v, acc, x.dtype), low)

    @MLIR.register("amin")
    def op_amin(self, op: Op, x: T) -> T:
        high = pymath.inf if x.dtype.is_float else 2 ** 63 - 1 if x.dtype is DType.i64 else 2 ** 31 - 1
        return self._reduction(op, x, lambda v, acc: self.min(v, acc, x.dtype), high)

    def _mean(self, x: T, dims: Sequence[int]) -> T:
        total = self.reduce(x, dims, lambda v, acc: self.add(v, acc, x.dtype), 0)
        count = self.const(float(np.prod([x.shape[d] for d in dims])), x.dtype)
        return self.ew(lambda s: self.div(s, count), [total], total.shape, x.dtype)

    @MLIR.register("mean")
    def op_mean(self, op: Op, x: T) -> T:
        dims = sorted(d % len(x.shape) for d in op.attrs["dims"]) or list(range(len(x.shape)))
        out = self._mean(x, dims)
        return self.reshape(out, op.result.type.shape) if op.attrs["keepdim"] else out

    @MLIR.register("var")
    def op_var(self, op: Op, x: T) -> T:
        dims = sorted(d % len(x.shape) for d in op.attrs["dims"]) or list(range(len(x.shape)))
        mean = self._mean(x, dims)
        sq = self.ew(lambda v, m: self.mul(self.sub(v, m, x.dtype), self.sub(v, m, x.dtype), x.dtype),
                     [x, self.kept(mean, len(x.shape), dims)], x.shape, x.dtype)
        total = self.reduce(sq, dims, lambda v, acc: self.add(v, acc, x.dtype), 0)
        n = self.const(max(float(np.prod([x.shape[d] for d in dims]) - op.attrs["correction"]), 0.0), x.dtype)
        out = self.ew(lambda s: self.div(s, n), [total], total.shape, x.dtype)
        return self.reshape(out, op.result.type.shape) if op.attrs["keepdim"] else out

    @MLIR.register("argmax")
    def op_argmax(self, op: Op, x: T) -> T:
        d = op.attrs["dim"] % len(x.shape)
        shape = tuple(s for i, s in enumerate(x.shape) if i != d)
        low = -pymath.inf if x.dtype.is_float else -(2 ** 63)
        exprs = [self.d(i) for i in range(len(x.shape)) if i != d]
        i64 = self.ir.IntegerType.get_signless(64)

        def body(a: list[Any]) -> list[Any]:
            v, best, best_i = a
            i = self.arith.IndexCastOp(i64, self.index(d)).result
            better = self.cmp("gt", v, best, x.dtype)
            return [self.select(better, v, best), self.select(better, i, best_i)]

        outs = [(self.fill(low, shape, x.dtype).value, exprs, shape, x.dtype),
                (self.fill(0, shape, DType.i64).value, exprs, shape, DType.i64)]
        _, idx = self.generic([(x, self.identity_exprs(len(x.shape)))], outs, len(x.shape), body, reductions=[d])
        return self.reshape(idx, op.result.type.shape) if op.attrs["keepdim"] else idx

    @MLIR.register("cumsum")
    def op_cumsum(self, op: Op, x: T) -> T:
        r, d = len(x.shape), op.attrs["dim"] % len(x.shape)
        src = [self.d(r) if i == d else self.d(i) for i in range(r)]

        def body(a: list[Any]) -> list[Any]:
            take = self.cmp("le", self.index(r), self.index(d), DType.i64)
            return [self.add(a[1], self.select(take, a[0], self.const(0, x.dtype)), x.dtype)]

        init = self.fill(0, x.shape, x.dtype).value
        return self.generic([(x, src)], [(init, self.identity_exprs(r), x.shape, x.dtype)], r + 1, body, reductions=[r])[0]

    def _softmax(self, x: T, d: int, log: bool) -> T:
        r, dt = len(x.shape), x.dtype
        peak = self.reduce(x, [d], lambda v, acc: self.max(v, acc, dt), -pymath.inf)
        shifted = self.ew(lambda v, m: self.sub(v, m, dt), [x, self.kept(peak, r, [d])], x.shape, dt)
        e = self.ew(self.exp, [shifted], x.shape, dt)
        total = self.reduce(e, [d], lambda v, acc: self.add(v, acc, dt), 0)
        if log:
            return self.ew(lambda s, t: self.sub(s, self.math.LogOp(t).result, dt),
                           [shifted, self.kept(total, r, [d])], x.shape, dt)
        zero = self.const(0.0, dt)
        return self.ew(lambda v, t: self.select(self.cmp("eq", t, zero, dt), zero, self.div(v, t)),
                       [e, self.kept(total, r, [d])], x.shape, dt)

    @MLIR.register("softmax")
    def op_softmax(self, op: Op, x: T) -> T:
        return self._softmax(x, op.attrs["dim"] % len(x.shape), log=False)

    @MLIR.register("log_softmax")
    def op_log_softmax(self, op: Op, x: T) -> T:
        return self._softmax(x, op.attrs["dim"] % len(x.shape), log=True)

    def _normalize(self, x: T, n: int, eps: float, center: bool) -> T:
        r, dt = len(x.shape), x.dtype
        dims = list(range(r - n, r))
        if center:
            mean = self._mean(x, dims)
            x = self.ew(lambda v, m: self.sub(v, m, dt), [x, self.kept(mean, r, dims)], x.shape, dt)
        sq = self.ew(lambda v: self.mul(v, v, dt), [x], x.shape, dt)
        ms = self._mean(sq, dims)
        eps_c = self.const(eps, dt)
        return self.ew(lambda v, s: self.div(v, self.math.SqrtOp(self.add(s, eps_c, dt)).result),
                       [x, self.kept(ms, r, dims)], x.shape, dt)

    def _affine(self, y: T, *params: T) -> T:
        for p, fn in zip(params, (self.mul, self.add)):
            y = self.ew(lambda a, b, fn=fn: fn(a, b, y.dtype), [y, p], y.shape, y.dtype)
        return y

    @MLIR.register("layer_norm")
    def op_layer_norm(self, op: Op, x: T, *affine: T) -> T:
        return self._affine(self._normalize(x, op.attrs["normalized_ndim"], op.attrs["eps"], True), *affine)

    @MLIR.register("rms_norm")
    def op_rms_norm(self, op: Op, x: T, *affine: T) -> T:
        return self._affine(self._normalize(x, op.attrs["normalized_ndim"], op.attrs["eps"], False), *affine)

    @MLIR.register("batch_norm")
    def op_batch_norm(self, op: Op, x: T, mean: T, var: T, *affine: T) -> T:
        dt = x.dtype
        chan = [self.d(1)]
        eps = self.const(op.attrs["eps"], dt)
        y = self.ew(lambda v, m, s: self.div(self.sub(v, m, dt), self.math.SqrtOp(self.add(s, eps, dt)).result),
                    [x, (mean, chan), (var, chan)], x.shape, dt)
        for p, fn in zip(affine, (self.mul, self.add)):
            y = self.ew(lambda a, b, fn=fn: fn(a, b, dt), [y, (p, chan)], x.shape, dt)
        return y

    def contract(self, a: tuple[T, list[Any]], b: tuple[T, list[Any]], shape: Sequence[int], loops: int,
                 reductions: Sequence[int], dtype: DType) -> T:
        init = self.fill(0, shape, dtype).value
        out_exprs = [self.d(i) for i in range(loops) if i not in reductions]
        body = lambda v: [self.add(v[2], self.mul(v[0], v[1], dtype), dtype)]
        return self.generic([a, b], [(init, out_exprs, shape, dtype)], loops, body, reductions)[0]

    @MLIR.register("matmul")
    def op_matmul(self, op: Op, a: T, b: T) -> T:
        out = op.result.type.shape
        batch = len(out) - 2
        m, n, k = batch, batch + 1, batch + 2
        a_exprs = self.bcast_exprs(a.shape[:-2], out[:-2]) + [self.d(m), self.d(k)]
        b_exprs = self.bcast_exprs(b.shape[:-2], out[:-2]) + [self.d(k), self.d(n)]
        return self.contract((a, a_exprs), (b, b_exprs), out, batch + 3, [k], a.dtype)

    @MLIR.register("linear")
    def op_linear(self, op: Op, x: T, w: T, *bias: T) -> T:
        out = op.result.type.shape
        lead = len(out) - 1
        k = lead + 1
        y = self.contract((x, [self.d(i) for i in range(lead)] + [self.d(k)]), (w, [self.d(lead), self.d(k)]),
                          out, lead + 2, [k], x.dtype)
        return self._affine(y, self.fill(1.0, [1], x.dtype), *bias) if bias else y

    @MLIR.register("attention")
    def op_attention(self, op: Op, q: T, k: T, v: T, *mask: T) -> T:
        a, dt = op.attrs, q.dtype
        lead = len(q.shape) - 2
        tk, dq = k.shape[-2], q.shape[-1]
        scores_shape = q.shape[:-1] + (tk,)
        rep = q.shape[-3] // k.shape[-3] if lead >= 1 else 1

        def kv_exprs(inner: list[Any]) -> list[Any]:
            heads = [self.d(i) for i in range(lead)]
            if rep > 1:
                heads[-1] = self.floordiv(heads[-1], rep)
            return heads + inner

        i, j, red = lead, lead + 1, lead + 2
        s = self.contract((q, [self.d(x) for x in range(lead)] + [self.d(i), self.d(red)]),
                          (k, kv_exprs([self.d(j), self.d(red)])), scores_shape, lead + 3, [red], dt)
        scale = a["scale"] if a["scale"] is not None else 1.0 / pymath.sqrt(dq)
        ninf, sc = self.const(-pymath.inf, dt), self.const(scale, dt)
        if a["causal"]:
            s = self.ew(lambda x: self.select(self.cmp("le", self.index(j), self.index(i), DType.i64),
                                              self.mul(x, sc, dt), ninf), [s], scores_shape, dt)
        else:
            s = self.ew(lambda x: self.mul(x, sc, dt), [s], scores_shape, dt)
        if mask:
            m = mask[0]
            if m.dtype is DType.bool:
                s = self.ew(lambda x, keep: self.select(keep, x, ninf), [s, m], scores_shape, dt)
            else:
                s = self.ew(lambda x, add: self.add(x, add, dt), [s, m], scores_shape, dt)
        p = self._softmax(s, len(scores_shape) - 1, log=False)
        out = op.result.type.shape
        return self.contract((p, [self.d(x) for x in range(lead)] + [self.d(i), self.d(red)]),
                             (v, kv_exprs([self.d(red), self.d(j)])), out, lead + 3, [red], dt)

    def _gather_rows(self, table: T, out_shape: Sequence[int], inputs: Sequence[tuple[T, list[Any]]],
                     coords: Callable[[list[Any]], list[Any]]) -> T:
        def body(a: list[Any]) -> list[Any]:
            return [self.tensor.ExtractOp(table.value, coords(a)).result]

        out = (None, self.identity_exprs(len(out_shape)), out_shape, table.dtype)
        return self.generic(inputs, [out], len(out_shape), body)[0]

    @MLIR.register("embedding")
    def op_embedding(self, op: Op, w: T, idx: T) -> T:
        r = len(idx.shape)
        return self._gather_rows(w, op.result.type.shape, [(idx, self.identity_exprs(r))],
                                 lambda a: [self.as_index(a[0]), self.index(r)])

    @MLIR.register("index_select")
    def op_index_select(self, op: Op, x: T, idx: T) -> T:
        d = op.attrs["dim"] % len(x.shape)
        return self._gather_rows(x, op.result.type.shape, [(idx, [self.d(d)])],
                                 lambda a: [self.as_index(a[0]) if i == d else self.index(i) for i in range(len(x.shape))])

    @MLIR.register("gather")
    def op_gather(self, op: Op, x: T, idx: T) -> T:
        d = op.attrs["dim"] % len(x.shape)
        return self._gather_rows(x, op.result.type.shape, [(idx, self.identity_exprs(len(idx.shape)))],
                                 lambda a: [self.as_index(a[0]) if i == d else self.index(i) for i in range(len(x.shape))])

    @MLIR.register("index")
    def op_index(self, op: Op, x: T, *indices: T) -> T:
        out = op.result.type.shape
        positions = [p % len(x.shape) for p in op.attrs["positions"]]
        picked = len(out) - (len(x.shape) - len(positions))
        contiguous = positions == list(range(positions[0], positions[0] + len(positions)))
        start = positions[0] if contiguous else 0
        idx_loops = list(range(start, start + picked))
        inputs = [(t, self.bcast_exprs(t.shape, [out[i] for i in idx_loops], start)) for t in indices]
        rest = [i for i in range(len(out)) if i not in idx_loops]

        def coords(a: list[Any]) -> list[Any]:
            it = iter(rest)
            return [self.as_index(a[positions.index(i)]) if i in positions else self.index(next(it))
                    for i in range(len(x.shape))]

        return self._gather_rows(x, out, inputs, coords)

    @MLIR.register("reshape")
    def op_reshape(self, op: Op, x: T) -> T:
        return self.reshape(x, op.result.type.shape)

    @MLIR.register("permute")
    def op_permute(self, op: Op, x: T) -> T:
        dims = op.attrs["dims"]
        inverse = [0] * len(dims)
        for i, p in enumerate(dims):
            inverse[p] = i
        return self.ew(lambda v: v, [(x, [self.d(inverse[j]) for j in range(len(dims))])], op.result.type.shape, x.dtype)

    @MLIR.register("expand")
    def op_expand(self, op: Op, x: T) -> T:
        return self.ew(lambda v: v, [x], op.result.type.shape, x.dtype)

    def _slice(self, x: T, d: int, start: int, size: int, step: int = 1) -> T:
        shape = list(x.shape)
        shape[d] = size
        offsets, strides = [0] * len(shape), [1] * len(shape)
        offsets[d], strides[d] = start, step
        op = self.tensor.ExtractSliceOp(self.ttype(shape, x.dtype), x.value, [], [], [], offsets, shape, strides)
        return T(op.result, tuple(shape), x.dtype)

    @MLIR.register("slice")
    def op_slice(self, op: Op, x: T) -> T:
        d = op.attrs["dim"] % len(x.shape)
        return self._slice(x, d, op.attrs["start"], op.result.type.shape[d], op.attrs["step"])

    @MLIR.register("split")
    def op_split(self, op: Op, x: T) -> list[T]:
        d, start, out = op.attrs["dim"] % len(x.shape), 0, []
        for size in op.attrs["sizes"]:
            out.append(self._slice(x, d, start, size))
            start += size
        return out

    @MLIR.register("concat")
    def op_concat(self, op: Op, *xs: T) -> T:
        t = op.result.type
        return T(self.tensor.ConcatOp(self.ttype(t.shape, t.dtype), op.attrs["dim"], [x.value for x in xs]).result,
                 tuple(t.shape), t.dtype)

    def _join(self, rows: Sequence[T], op: Op) -> T:
        t = op.result.type
        return T(self.tensor.ConcatOp(self.ttype(t.shape, t.dtype), 0, [r.value for r in rows]).result, tuple(t.shape), t.dtype)

    @MLIR.register("stack")
    def op_stack(self, op: Op, *xs: T) -> T:
        d = op.attrs["dim"] % op.result.type.rank
        if d != 0:
            raise MLIRExportError(f"MLIR export of {op.describe()} along dim {d} is not supported yet (only dim 0)")
        return self._join([self.reshape(x, (1, *x.shape)) for x in xs], op)

    @MLIR.register("layer_scan")
    def op_layer_scan(self, op: Op, base: T, *deltas: T) -> T:
        rows, used = [base], [0] * len(deltas)
        for g in op.attrs["pattern"]:
            row = self.reshape(self._slice(deltas[g], 0, used[g], 1), base.shape)
            used[g] += 1
            rows.append(self.ew(lambda a, b: self.add(a, b, base.dtype), [rows[-1], row], base.shape, base.dtype))
        return self._join([self.reshape(r, (1, *r.shape)) for r in rows], op)

    def _triangle(self, op: Op, x: T, keep_below: bool) -> T:
        r, k = len(x.shape), op.attrs["diagonal"]
        i64 = DType.i64

        def fn(v: Any) -> Any:
            row = self.arith.IndexCastOp(element_type(self.ir, i64), self.index(r - 2)).result
            col = self.arith.IndexCastOp(element_type(self.ir, i64), self.index(r - 1)).result
            limit = self.add(row, self.const(k, i64), i64)
            keep = self.cmp("le" if keep_below else "ge", col, limit, i64)
            return self.select(keep, v, self.const(0, x.dtype))

        return self.ew(fn, [x], x.shape, x.dtype)

    @MLIR.register("tril")
    def op_tril(self, op: Op, x: T) -> T:
        return self._triangle(op, x, True)

    @MLIR.register("triu")
    def op_triu(self, op: Op, x: T) -> T:
        return self._triangle(op, x, False)

    def _pad(self, x: T, ph: int, pw: int, value: float) -> T:
        return self._pad_dims(x, [0, 0, ph, pw], [0, 0, ph, pw], value)

    def _pad_dims(self, x: T, low: Sequence[int], high: Sequence[int], value: float) -> T:
        """``x`` with ``low[d]`` / ``high[d]`` elements of ``value`` before / after each dim (none negative)."""
        if not any(low) and not any(high):
            return x
        rank = len(x.shape)
        padded = [d for d in range(rank) if low[d] or high[d]]
        shape = tuple(n + low[d] + high[d] for d, n in enumerate(x.shape))
        i64 = DType.i64

        def position(dim: int) -> Any:
            return self.arith.IndexCastOp(element_type(self.ir, i64), self.index(dim)).result

        def fn(v: Any) -> Any:
            inside = None
            for dim in padded:
                i = position(dim)
                ok = self.arith.AndIOp(self.cmp("ge", i, self.const(low[dim], i64), i64),
                                       self.cmp("lt", i, self.const(low[dim] + x.shape[dim], i64), i64)).result
                inside = ok if inside is None else self.arith.AndIOp(inside, ok).result
            return self.select(inside, v, self.const(value, x.dtype))

        # read x at (i - low), clamped into range; the select discards out-of-range reads
        def coords() -> list[Any]:
            out = []
            for dim in range(rank):
                if dim not in padded:
                    out.append(self.index(dim))
                    continue
                j = self.min(self.max(self.sub(position(dim), self.const(low[dim], i64), i64), self.const(0, i64), i64),
                             self.const(x.shape[dim] - 1, i64), i64)
                out.append(self.as_index(j))
            return out

        def body(a: list[Any]) -> list[Any]:
            return [fn(self.tensor.ExtractOp(x.value, coords()).result)]

        return self.generic([], [(None, self.identity_exprs(rank), shape, x.dtype)], rank, body)[0]

    @MLIR.register("pad")
    def op_pad(self, op: Op, x: T) -> T:
        low, high = op.attrs["low"], op.attrs["high"]
        if min(*low, *high) < 0:
            raise MLIRExportError(f"MLIR export of {op.describe()} with negative padding (a crop) is not supported "
                                  "yet: slice the tensor instead, or run it on lamina's backends")
        return self._pad_dims(x, low, high, op.attrs["value"])

    def _window(self, x: T, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int],
                out_shape: Sequence[int], combine: Callable[[Any, Any], Any], start: Any) -> T:
        (sh, sw), (dh, dw) = pair("stride", stride or kernel), pair("dilation", dilation)
        kh, kw = pair("kernel", kernel)
        loops = 6  # n, c, y, x, ky, kx
        exprs = [self.d(0), self.d(1), self.d(2) * sh + self.d(4) * dh, self.d(3) * sw + self.d(5) * dw]
        init = self.fill(start, out_shape, x.dtype).value
        window = self.fill(0, (kh, kw), x.dtype)  # only gives the ky, kx loops their extent
        return self.generic([(x, exprs), (window, [self.d(4), self.d(5)])],
                            [(init, self.identity_exprs(4), out_shape, x.dtype)], loops,
                            lambda a: [combine(a[0], a[2])], reductions=[4, 5])[0]

    @MLIR.register("max_pool2d")
    def op_max_pool2d(self, op: Op, x: T) -> T:
        _no_ceil_mode(op)
        ph, pw = pair("padding", op.attrs["padding"])
        padded = self._pad(x, ph, pw, -pymath.inf)
        return self._window(padded, op.attrs["kernel"], op.attrs["stride"], op.attrs["dilation"],
                            op.result.type.shape, lambda v, acc: self.max(v, acc, x.dtype), -pymath.inf)

    @MLIR.register("avg_pool2d")
    def op_avg_pool2d(self, op: Op, x: T) -> T:
        _no_ceil_mode(op)
        a, dt = op.attrs, x.dtype
        ph, pw = pair("padding", a["padding"])
        out = op.result.type.shape
        total = self._window(self._pad(x, ph, pw, 0.0), a["kernel"], a["stride"], [1], out,
                             lambda v, acc: self.add(v, acc, dt), 0.0)
        kh, kw = pair("kernel", a["kernel"])
        if a["divisor_override"] or a["count_include_pad"]:
            n = self.const(float(a["divisor_override"] or kh * kw), dt)
            return self.ew(lambda s: self.div(s, n), [total], out, dt)
        ones = self.fill(1.0, (1, 1) + x.shape[2:], dt)
        count = self._window(self._pad(ones, ph, pw, 0.0), a["kernel"], a["stride"], [1], (1, 1) + tuple(out[2:]),
                             lambda v, acc: self.add(v, acc, dt), 0.0)
        return self.ew(lambda s, c: self.div(s, c), [total, count], out, dt)

    @MLIR.register("conv2d")
    def op_conv2d(self, op: Op, x: T, w: T, *bias: T) -> T:
        a, dt = op.attrs, x.dtype
        (sh, sw), (ph, pw), (dh, dw) = (pair(k, a[k]) for k in ("stride", "padding", "dilation"))
        last = a["layout"] == "nhwc"
        padded = self._pad_dims(x, [0, ph, pw, 0], [0, ph, pw, 0], 0.0) if last else self._pad(x, ph, pw, 0.0)
        out = op.result.type.shape
        per_group_in, per_group_out = w.shape[1], w.shape[0] // a["groups"]
        # loops: the output's dims (n, o, y, x; n, y, x, o with layout=nhwc), c (in-group channel), ky, kx
        o, y_, x_ = (self.d(3), self.d(1), self.d(2)) if last else (self.d(1), self.d(2), self.d(3))
        chan = self.floordiv(o, per_group_out) * per_group_in + self.d(4) if a["groups"] > 1 else self.d(4)
        rows, cols = y_ * sh + self.d(5) * dh, x_ * sw + self.d(6) * dw
        x_exprs = [self.d(0), rows, cols, chan] if last else [self.d(0), chan, rows, cols]
        w_exprs = [o, self.d(4), self.d(5), self.d(6)]
        y = self.contract((padded, x_exprs), (w, w_exprs), out, 7, [4, 5, 6], dt)
        if bias:
            y = self.ew(lambda v, b: self.add(v, b, dt), [y, (bias[0], [o])], out, dt)
        return y


def _no_ceil_mode(op: Op) -> None:
    if op.attrs["ceil_mode"]:
        raise MLIRExportError(f"MLIR export of {op.describe()} with ceil_mode=true is not supported yet")


_MATH = {"exp": "ExpOp", "log": "LogOp", "sqrt": "SqrtOp", "tanh": "TanhOp", "sin": "SinOp", "cos": "CosOp",
         "erf": "ErfOp", "floor": "FloorOp", "log1p": "Log1pOp"}

_LATER = "not supported yet: export the graph before the pass or frontend that makes it, or run it on lamina's backends"
# ops the export refuses, and why (every op is exported, a scalar formula, or listed here: tests/ir/test_op_registry.py)
NOT_EXPORTED = {
    "newton": "lower it first with the newton-expand pass (e.g. --pipeline 'canonicalize,newton{iters=2},newton-expand')",
    "iterate": "a loop with an early exit (newton with tol > 0); " + _LATER,
    "route": "a layer run or skipped at run time (skip{policy=router|temporal}); " + _LATER,
    **{name: _LATER for name in ("slice_scatter", "as_strided", "topk", "sort", "histc", "index_put")},
    **{name: "packed quantized weights have no MLIR form here; export the graph before the quantize pass"
       for name in ("quantize", "qlinear")},
    **{name: "collectives across ranks have no standard-dialect form; export the graph before the shard pass"
       for name in ("all_reduce", "reduce_scatter", "all_gather", "all_reduce_start", "reduce_scatter_start",
                    "all_gather_start", "wait", "rank_slice")},
}


def _arith(name: str) -> Callable[..., Any]:
    return lambda lw, a, at, dt: getattr(lw, name)(a[0], a[1], dt)


for _name in ("add", "sub", "mul"):
    SCALAR.register(_name)(_arith(_name))
SCALAR.register("maximum")(_arith("max"))
SCALAR.register("minimum")(_arith("min"))
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    SCALAR.register(_name)(lambda lw, a, at, dt, pred=_name: lw.cmp(pred, a[0], a[1], dt))
for _name, _op in (("logical_and", "AndIOp"), ("logical_or", "OrIOp"), ("logical_xor", "XOrIOp")):
    SCALAR.register(_name)(lambda lw, a, at, dt, op=_op: getattr(lw.arith, op)(a[0], a[1]).result)
for _name, _op in _MATH.items():
    SCALAR.register(_name)(lambda lw, a, at, dt, op=_op: getattr(lw.math, op)(a[0]).result)
for _name in ("floor_divide", "remainder", "fmod"):
    SCALAR.register(_name)(lambda lw, a, at, dt, name=_name: getattr(lw, name)(a[0], a[1], dt))
SCALAR.register("div")(lambda lw, a, at, dt: lw.div(a[0], a[1]))
SCALAR.register("pow")(lambda lw, a, at, dt: (lw.math.PowFOp if dt.is_float else lw.math.IPowIOp)(a[0], a[1]).result)
SCALAR.register("logical_not")(lambda lw, a, at, dt: lw.arith.XOrIOp(a[0], lw.const(True, DType.bool)).result)
SCALAR.register("where")(lambda lw, a, at, dt: lw.select(a[0], a[1], a[2]))
SCALAR.register("neg")(lambda lw, a, at, dt: lw.arith.NegFOp(a[0]).result if dt.is_float
                       else lw.sub(lw.const(0, dt), a[0], dt))
SCALAR.register("abs")(lambda lw, a, at, dt: (lw.math.AbsFOp if dt.is_float else lw.math.AbsIOp)(a[0]).result)
SCALAR.register("cast")(lambda lw, a, at, dt: lw.cast(a[0], dt, at["dtype"]))


def _bits(dtype: DType) -> int:
    return {DType.f64: 64, DType.f32: 32, DType.f16: 16, DType.bf16: 16, DType.i64: 64, DType.i32: 32,
            DType.i8: 8, DType.u8: 8, DType.i4: 4, DType.bool: 1}[dtype]
