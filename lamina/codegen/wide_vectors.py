"""Ask LLVM for 512-bit vectors in a Numba kernel.

LLVM's tuning for AVX-512 x86 CPUs prefers 256-bit vectors (``prefer-256-bit``), so loops
on such machines use half the register width unless a function says otherwise. Each
generated kernel calls ``prefer_wide_vectors()`` inside its parallel loop body, which sets
the function attribute ``"prefer-vector-width"="512"`` on the function Numba lowers that
body into (the parfor's gufunc). It emits no instructions, and on a CPU without 512-bit
registers the vectorizer stays at the register width, so it is harmless there.

llvmlite's ``FunctionAttributes`` only admits flag attributes; a string attribute goes in
through ``set.add``, and llvmlite prints the set's members verbatim into the function
header, where LLVM's IR syntax accepts ``"key"="value"`` pairs.
"""

SOURCE = r'''
@_intrinsic
def prefer_wide_vectors(typingctx):
    def codegen(context, builder, signature, args):
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return _types.none(), codegen
'''
