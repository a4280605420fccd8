"""The op registry is complete: every op has a category, a reference, and an entry for each target that claims it.

Adding an op without deciding what a target does with it fails here, naming the op and the target.
"""
from __future__ import annotations

import numpy as np
import pytest

from lamina.codegen.cpu_numba import NumbaPrinter
from lamina.codegen.cuda_c import CudaCPrinter
from lamina.codegen.cuda_numba import CudaNumbaPrinter
from lamina.codegen.kernel import Call, Var
from lamina.codegen.kernel_ops import KERNEL
from lamina.ir.dtypes import DType
from lamina.ir.interpreter import GROUP_OPS, REGION_SEMANTICS
from lamina.ir.mlir_lowering import MLIR, NOT_EXPORTED, SCALAR
from lamina.ir.opdef import Category
from lamina.ir.ops import REGISTRY
from lamina.ir.scalar import LOGICAL, PRIMITIVES, numpy_ops
from lamina.ir.targets import NoLowering
from lamina.runtime.library import LIBRARY, VIEWS

OPS = sorted(REGISTRY)


@pytest.mark.parametrize("name", OPS)
def test_every_op_has_a_category_doc_and_reference(name: str) -> None:
    opdef = REGISTRY[name]
    assert isinstance(opdef.category, Category)
    assert opdef.doc
    # region ops have their semantics in the interpreter, collectives in the simulated group (ir/group.py)
    assert (opdef.reference is None) == (opdef.category is Category.STRUCTURAL or name in GROUP_OPS), \
        f"{name}: every op but the structural ones has reference semantics"
    if opdef.category is Category.REDUCTION:
        assert opdef.reduced_axes(3, {"dims": [], "dim": -1, "normalized_ndim": 1}), name


@pytest.mark.parametrize("name", OPS)
def test_every_kernel_op_has_a_kernel_lowering(name: str) -> None:
    """Views, constants, pointwise ops and reductions are computed inside kernels; elementwise ops are
    primitives the printers spell or composites with a scalar formula; scans have a kernel of their own."""
    opdef = REGISTRY[name]
    if opdef.category is Category.ELEMENTWISE:
        assert (name in PRIMITIVES) != (opdef.scalar is not None), \
            f"{name}: an elementwise op is a scalar primitive or has a scalar formula, not both"
    elif opdef.category.in_kernel and opdef.category is not Category.SCAN or opdef.category.free:
        assert name in KERNEL, f"op {name} ({opdef.category.value}) has no kernel lowering (codegen/kernel_ops.py)"


@pytest.mark.parametrize("name", OPS)
def test_library_and_view_ops_have_wrapper_lines(name: str) -> None:
    category = REGISTRY[name].category
    if category is Category.LIBRARY:
        assert name in LIBRARY, f"library op {name} has no library call (runtime/library.py)"
    if category.free:
        assert name in VIEWS, f"{category.value} op {name} has no torch view (runtime/library.py)"


@pytest.mark.parametrize("name", OPS)
def test_every_op_is_exported_to_mlir_or_refused_with_a_reason(name: str) -> None:
    opdef = REGISTRY[name]
    handled = name in MLIR or name in SCALAR or opdef.scalar is not None or opdef.terminator
    assert handled != (name in NOT_EXPORTED), f"op {name}: an MLIR lowering, or a reason in NOT_EXPORTED"


def test_region_ops_have_semantics_in_the_interpreter() -> None:
    for name, opdef in REGISTRY.items():
        if opdef.regions:
            assert name in REGION_SEMANTICS, name


@pytest.mark.parametrize("printer", [NumbaPrinter(), CudaCPrinter(), CudaNumbaPrinter()], ids=lambda p: p.target)
@pytest.mark.parametrize("name", sorted(PRIMITIVES - {"floor_divide", "remainder", "fmod"}))
def test_every_scalar_primitive_has_a_spelling_on_every_kernel_target(printer, name: str) -> None:
    dtype = DType.bool if name in LOGICAL else DType.f32
    arity = 3 if name == "where" else 1 if REGISTRY[name].max_operands == 1 else 2
    args = tuple(Var(DType.bool if name == "where" and i == 0 else dtype, f"a{i}") for i in range(arity))
    attrs = (("dtype", DType.i64),) if name == "cast" else ()
    assert printer.expr(Call(dtype, name, args, attrs))


@pytest.mark.parametrize("name", sorted(n for n, o in REGISTRY.items() if o.scalar is not None))
def test_scalar_formulas_match_their_reference_on_edge_values(name: str) -> None:
    """The formula is the reference; evaluated elementwise it is also finite where the input is."""
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0, np.nan], dtype=np.float32)
    attrs = REGISTRY[name].complete_attrs({"min": -1.0, "max": 1.0} if name == "clamp" else {})
    with np.errstate(invalid="ignore", divide="ignore"):
        got = REGISTRY[name].scalar(numpy_ops(x.dtype), x, **attrs)
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), REGISTRY[name].reference([x], attrs))


def test_a_missing_lowering_names_the_op_the_target_and_what_it_has() -> None:
    with pytest.raises(NoLowering, match=r"op conv3d has no library call for target library; it has library calls for: .*linear"):
        LIBRARY.get("conv3d")
    with pytest.raises(NoLowering, match=r"op sum \(here\) has no view for target library; it has views for: .*reshape"):
        VIEWS.get("sum", "here")


def test_kernel_formulas_type_each_primitive() -> None:
    """Comparisons give bool, a cast its target dtype, arithmetic the formula's dtype."""
    from lamina.codegen.region_builder import kernel_scalars

    f, x = kernel_scalars(DType.f32), Var(DType.f32, "x")
    assert f.lt(x, f.const(0)).dtype is DType.bool
    assert f.cast(x, dtype=DType.i64).dtype is DType.i64
    assert f.add(x, f.const(1)).dtype is DType.f32
