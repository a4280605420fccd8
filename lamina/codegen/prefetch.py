"""``prefetch(array, index)``: a software prefetch of ``array``'s element ``index`` into all cache levels.

A kernel that does much work per byte it reads (the quantized GEMV unpacks and converts 32 or
64 weights per cache line) keeps few loads in flight, and the hardware prefetchers alone then
stream only about 12 GB/s per machine here; asking for the next row's lines at the start of
each row lifts the int8 GEMV from 11 to 18 G weights/s (``benchmarks/quant.py``). It lowers
to ``llvm.prefetch`` (read, high locality, data cache) on a 1-d array's element pointer and
emits no other instruction; a prefetch never faults, so an address past the end is harmless.
"""

SOURCE = r'''
from llvmlite import ir as _prefetch_ir
from numba.core import cgutils as _prefetch_cgutils
from numba.core import types as _prefetch_types
from numba.extending import intrinsic as _prefetch_intrinsic


@_prefetch_intrinsic
def prefetch(typingctx, array, index):
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), _prefetch_ir.IntType(8).as_pointer())
        i32 = _prefetch_ir.IntType(32)
        kind = _prefetch_ir.FunctionType(_prefetch_ir.VoidType(), [address.type, i32, i32, i32])
        fn = _prefetch_cgutils.get_or_insert_function(builder.module, kind, "llvm.prefetch.p0")
        builder.call(fn, [address, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return _prefetch_types.none(array, _prefetch_types.intp), codegen
'''
