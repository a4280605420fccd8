"""NaN-propagating float max/min for the Numba CPU target, as LLVM's ``llvm.maximum`` / ``llvm.minimum``.

A max reduction written as compare-and-select (``acc = v if v > acc else acc``) does not vectorize:
LLVM's loop vectorizer takes a select-based min/max recurrence only when the function promises no
NaNs, which Numba never says (and which would be wrong: torch's max propagates NaN). The
``llvm.maximum`` intrinsic has exactly torch's semantics (NaN in, NaN out; +0 above -0), so the
vectorizer reduces it in vector registers with no fast-math flags: a 4096 x 1024 row max on the
project's CPU went from 3.0 ms (scalar, with a NaN count on the side) to 0.39 ms.
"""

SOURCE = r'''
from llvmlite import ir as _ir


def _llvm_binary(intrinsic_name, nb_type):
    @_intrinsic
    def call(typingctx, a, b):
        def codegen(context, builder, signature, args):
            t = context.get_value_type(nb_type)
            fn = builder.module.declare_intrinsic(intrinsic_name, [t], _ir.FunctionType(t, [t, t]))
            return builder.call(fn, args)

        return nb_type(nb_type, nb_type), codegen

    return call


fmaximum32 = _llvm_binary("llvm.maximum", _types.float32)
fminimum32 = _llvm_binary("llvm.minimum", _types.float32)
fmaximum64 = _llvm_binary("llvm.maximum", _types.float64)
fminimum64 = _llvm_binary("llvm.minimum", _types.float64)
'''
