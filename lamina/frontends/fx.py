"""torch models -> lamina Graph, through torch.export and a core ATen op set.

``import_module`` exports an ``nn.Module``; ``import_graph_module`` takes the
fx GraphModule a dynamo backend receives. Both decompose to core ATen (keeping
attention, linear, norms and activations whole) and translate node by node with
``aten.CONVERTERS``. Every unsupported op is collected, then reported at once.
"""
from __future__ import annotations

import operator
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.fx
import torch.utils._pytree as pytree

from ..errors import ExportError, UnsupportedOp, UnsupportedOpsError
from ..ir.builder import GraphBuilder
from ..ir.core import Graph, Loc, Value
from ..ir.dtypes import DType
from ..ir.opdef import InferenceError
from ..ir.shapes import dim
from ..ir.types import TensorType
from .aten import CONVERTERS, IN_PLACE, NO_OUTPUT
from .context import Context, Unsupported, tensor_type

# High-level ops lamina keeps whole instead of letting torch decompose them.
KEEP_WHOLE = (
    "scaled_dot_product_attention.default", "linear.default", "layer_norm.default", "rms_norm.default",
    "gelu.default", "silu.default", "softmax.int", "log_softmax.int", "conv2d.default",
)


@dataclass(frozen=True)
class InputRole:
    """A flat call argument that becomes graph input ``index``."""

    index: int


@dataclass(frozen=True)
class ParamRole:
    """A flat call argument that is the weight ``key`` (dynamo passes weights as arguments)."""

    key: str


@dataclass(frozen=True)
class ConstRole:
    """A flat call argument that was not a tensor; the graph is specialised to its traced value."""

    value: Any


Role = InputRole | ParamRole | ConstRole


@dataclass(frozen=True)
class Mutation:
    """The model updates a tensor in place: graph output ``output`` is its new value, written back after
    each call into weight ``weight`` (a buffer, ``self.n.add_(1)``) or into call argument ``argument``
    (flat position; an input the model mutates, or a buffer dynamo passes as an argument)."""

    output: int
    weight: str | None = None
    argument: int | None = None


@dataclass
class Imported:
    """A translated model: the graph, its weights, and how call arguments map onto it.

    The graph's outputs are the model's outputs (``out_spec``) followed by the new values of the
    tensors it mutates (``mutations``)."""

    graph: Graph
    weights: dict[str, torch.Tensor]
    roles: tuple[Role, ...]
    in_spec: Any
    out_spec: Any
    mutations: tuple[Mutation, ...] = ()
    trainable: bool = False  # some weight required grad when traced
    keywords: tuple[str, ...] = ()  # traced by keyword: a call's positional arguments are these parameters


def module_path(node: torch.fx.Node) -> str:
    """The dotted module path of a node (``h.0.attn.c_proj``), from its ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    if path.startswith("_empty_nn_module_stack"):
        return ""
    path = re.sub(r"^L\['[^']*'\]\.?", "", path)
    path = re.sub(r"^L__[a-z_]+___", "", path)
    path = re.sub(r"\._modules\['([^']*)'\]", r".\1", path)
    return path.strip(".")


def decomposition_table() -> dict:
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        overload = _overload(name)
        if overload is not None and overload in table:
            table.pop(overload)
    return table


def _overload(name: str) -> Any:
    packet, _, overload = name.partition(".")
    packet_obj = getattr(torch.ops.aten, packet, None)
    return getattr(packet_obj, overload, None) if packet_obj is not None else None


# torch.export keeps its tracing state (dispatch mode stacks) per process: two threads exporting at
# once corrupt each other's, so exports take turns
_EXPORT_LOCK = threading.RLock()


def export(model: torch.nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
           dynamic_shapes: Any = None, as_exported: bool = False) -> torch.export.ExportedProgram:
    """torch.export the model (one thread at a time) and decompose it to lamina's core ATen set unless
    lamina reads it as it is; ``as_exported``: never decompose (``_translate`` decides later)."""
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            try:
                ep = torch.export.export(model, tuple(args), dict(kwargs or {}), dynamic_shapes=dynamic_shapes,
                                         strict=False)
            except Exception as e:  # noqa: BLE001 - torch's message says what it could not trace
                raise ExportError(f"torch.export could not trace {type(model).__name__}, so lamina cannot compile "
                                  f"it: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                                  " (data-dependent shapes or Python control flow on tensor values are the usual "
                                  "causes; torch.compile(backend='lamina') runs such code in PyTorch)") from e
            if as_exported or _translatable_as_is(ep):
                return ep  # decomposing would change nothing lamina reads, and costs ~0.6 s on a GPT-2 stack
            return decomposed(ep)


def decomposed(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``ep`` in lamina's core ATen set (functional: in-place ops replaced), one thread at a time."""
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return ep.run_decompositions(decomposition_table())


def _translatable_as_is(ep: torch.export.ExportedProgram) -> bool:
    """Every op of the exported graph has a converter, no input is mutated, and each in-place op
    mutates a tensor nothing else sees (``_unseen_mutation``)."""
    sig = ep.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate:
        return False
    known = set(CONVERTERS) | set(NO_OUTPUT) | set(SYMBOLIC)
    order = {n: i for i, n in enumerate(ep.graph.nodes)}
    for n in ep.graph.nodes:
        if n.op != "call_function" or n.target is operator.getitem:
            continue
        name = _target_name(n.target)
        if name not in known or (name in IN_PLACE and not _unseen_mutation(n, order)):
            return False
    return True


def _aliases(node: torch.fx.Node) -> bool:
    """Whether ``node``'s result may share memory with an operand (a view, an in-place op)."""
    schema = getattr(node.target, "_schema", None)
    return schema is None or any(r.alias_info is not None for r in schema.returns)


def _unseen_mutation(node: torch.fx.Node, order: Mapping[torch.fx.Node, int]) -> bool:
    """Whether the in-place ``node`` (``x.add_(y)``) can be translated as ``x + y``: ``x`` is a fresh
    intermediate (no input, no view, not itself mutated before) that nothing reads after ``node``
    except through ``node``'s own result, and no view of ``x`` exists that could see the change."""
    x = node.args[0]
    if not isinstance(x, torch.fx.Node) or x.op != "call_function" or _aliases(x):
        return False
    return all(u is node or (order[u] < order[node] and not _aliases(u)) for u in x.users)


def import_module(model: torch.nn.Module, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None,
                  dynamic_shapes: Any = None) -> Imported:
    """Translate an nn.Module called as ``model(*args, **kwargs)``; weights keyed by state-dict names."""
    from .transformers_support import as_keywords, export_context, is_transformers_model

    args, kwargs = _without_aliases(tuple(args), dict(kwargs or {}))
    keywords: tuple[str, ...] = ()
    if is_transformers_model(model):  # traced by keyword (see transformers_support.as_keywords)
        keywords, kwargs = as_keywords(model, args, kwargs)
        if isinstance(dynamic_shapes, (tuple, list)):
            dynamic_shapes = dict(zip(keywords, dynamic_shapes))
        args = ()
    with export_context(model, kwargs):
        if isinstance(dynamic_shapes, str) and dynamic_shapes == "auto":
            dynamic_shapes = auto_dynamic_shapes(model, args, kwargs)
        ep = export(model, args, kwargs, dynamic_shapes, as_exported=True)
    imported = _translate(ep, type(model).__name__, param_keys={})
    imported.keywords = keywords
    return imported


def _translate(ep: torch.export.ExportedProgram, model_name: str, param_keys: Mapping[int, str]) -> Imported:
    """``ep`` (as exported) translated: as it is when every op has a converter, else (or when a
    converter refuses a case its op's decomposition covers: a reflect pad) after decomposing it."""
    if _translatable_as_is(ep):
        try:
            return _Translator(ep, model_name).run(param_keys=param_keys)
        except UnsupportedOpsError:
            pass  # the decomposed program may translate: its errors are the ones to report
    return _Translator(decomposed(ep), model_name).run(param_keys=param_keys)


def auto_dynamic_shapes(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | dict:
    """torch.export ``dynamic_shapes`` marking every dim of every tensor ``Dim.AUTO``: export keeps
    dynamic what the model lets vary (batch, sequence, cache length) and fixes the rest."""
    def spec(x: Any) -> Any:
        if isinstance(x, torch.Tensor):  # sizes 0 and 1 are specialised by export anyway
            return {d: torch.export.Dim.AUTO for d in range(x.dim()) if x.shape[d] > 1}
        leaves = pytree.tree_leaves(x)
        if len(leaves) == 1 and leaves[0] is x:
            return None  # a number or None
        return [spec(leaf) for leaf in leaves]  # a container or a registered class (a KV cache)

    if not kwargs:
        return tuple(spec(a) for a in args)
    import inspect  # by parameter name, as torch.export wants when keywords are given

    params = inspect.signature(model.forward).parameters
    var_keyword = next((p.name for p in params.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    shapes: dict[str, Any] = {name: spec(a) for name, a in zip(params, args)}
    for key, value in kwargs.items():
        if key in params or var_keyword is None:
            shapes[key] = spec(value)
        else:  # collected by **kwargs: torch.export nests them under its name
            shapes.setdefault(var_keyword, {})[key] = spec(value)
    return shapes


def _without_aliases(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The example arguments with every tensor sharing memory with an earlier one replaced by a copy.

    torch.export traces ``model(x, x)`` as one input read twice, so a later call ``model(x, y)`` would
    compute with ``x`` in both places; traced from distinct tensors, the arguments stay distinct."""
    seen: set[int] = set()

    def distinct(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.numel() == 0:
            return x
        ptr = x.untyped_storage().data_ptr()
        if ptr in seen:
            return x.detach().clone()
        seen.add(ptr)
        return x

    return pytree.tree_map(distinct, (args, kwargs))


def import_graph_module(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *,
                        module: torch.nn.Module | None = None, positions: Sequence[int] | None = None,
                        dynamic_shapes: Any = None) -> Imported:
    """Translate the GraphModule a dynamo backend receives; parameters passed as inputs keep their names.

    ``module`` (default ``gm``) is what is exported, called with the arguments at ``positions``
    of ``example_inputs`` (default all); ``dynamic_shapes`` as for torch.export."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    positions = list(range(len(example_inputs))) if positions is None else list(positions)
    param_keys = {}
    for i, position in enumerate(positions):
        if isinstance(example_inputs[position], torch.nn.Parameter):
            param_keys[i] = _dynamo_param_key(placeholders[position])
    # detached aliases: export may annotate its inputs, which must not leak into dynamo's guards
    args = tuple(_alias(example_inputs[p]) for p in positions)
    ep = export(module if module is not None else gm, args, dynamic_shapes=dynamic_shapes, as_exported=True)
    return _translate(ep, "GraphModule", param_keys)


def _alias(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def _dynamo_param_key(node: torch.fx.Node) -> str:
    """``L_self_modules_h_modules_0_modules_ln_1_parameters_weight_`` -> ``h.0.ln_1.weight``."""
    target = str(node.target)
    rest = target[target.find("_modules_") + 1:] if "_modules_" in target else target
    rest = re.sub(r"^L_[A-Za-z0-9]+_(?=(modules|parameters|buffers)_)", "", rest)
    parts = re.findall(r"(?:modules|parameters|buffers)_(.*?)(?=_(?:modules|parameters|buffers)_|_$)", rest)
    return ".".join(parts) or node.name


class _Translator:
    def __init__(self, ep: torch.export.ExportedProgram, model_name: str) -> None:
        self.ep = ep
        self.model_name = model_name
        self.builder = GraphBuilder("forward")
        self.env: dict[torch.fx.Node, Any] = {}
        self.unsupported: list[UnsupportedOp] = []
        self.argument_of: dict[str, int] = {}  # user input name -> flat call position

    def run(self, param_keys: Mapping[int, str]) -> Imported:
        weights, roles = self.placeholders(param_keys)
        for node in self.ep.graph.nodes:
            if node.op == "call_function":
                self.call(node)
        output = next(n for n in self.ep.graph.nodes if n.op == "output")
        outputs, mutations = self.outputs(output)
        if self.unsupported:
            raise UnsupportedOpsError(self.unsupported, self.model_name)
        graph = self.builder.build(outputs)
        trainable = any(t.requires_grad for t in self.ep.state_dict.values())
        return Imported(graph, weights, tuple(roles), self.ep.call_spec.in_spec, self.ep.call_spec.out_spec,
                        tuple(mutations), trainable)

    # --- placeholders ---------------------------------------------------------------------
    def placeholders(self, param_keys: Mapping[int, str]) -> tuple[dict[str, torch.Tensor], list[Role]]:
        from torch.export.graph_signature import InputKind

        weights: dict[str, torch.Tensor] = {}
        roles: list[Role] = []
        nodes = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        state = {**self.ep.state_dict, **self.ep.constants}
        user_index = 0
        for spec in self.ep.graph_signature.input_specs:
            node = nodes[spec.arg.name]
            meta = node.meta.get("val")
            if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                key = spec.target
                self.env[node] = self.builder.param(key, self.type_of(node, meta))
                weights[key] = state[key].detach()
            elif spec.kind == InputKind.USER_INPUT:
                position = user_index
                user_index += 1
                self.argument_of[spec.arg.name] = position
                if not isinstance(meta, torch.Tensor):
                    roles.append(ConstRole(meta))
                    self.env[node] = meta
                elif position in param_keys:
                    key = param_keys[position]
                    self.env[node] = self.builder.param(key, self.type_of(node, meta))
                    roles.append(ParamRole(key))
                else:
                    roles.append(InputRole(len(self.builder.inputs)))
                    self.env[node] = self.builder.input(self.type_of(node, meta), node.name)
            else:
                self.report(node, f"input kind {spec.kind.name} is not supported")
        return weights, roles

    def type_of(self, node: torch.fx.Node, meta: Any) -> TensorType:
        try:
            return tensor_type(meta)
        except Unsupported as e:
            self.report(node, str(e))
            return TensorType((), DType.f32)  # a stand-in; the op is already reported

    # --- ops ------------------------------------------------------------------------------
    def call(self, node: torch.fx.Node) -> None:
        target = _target_name(node.target)
        if node.target is operator.getitem:
            source, index = node.args
            self.env[node] = self.env[source][index] if self.env.get(source) is not None else None
            return
        if target in NO_OUTPUT:
            return
        if target in SYMBOLIC:
            self.symbolic(node, target)
            return
        converter = CONVERTERS.get(target)
        if converter is None:
            self.report(node, _why_untranslated(target))
            return
        loc = Loc(module_path(node), target)
        try:
            args = pytree.tree_map(self.lookup, node.args)
            kwargs = pytree.tree_map(self.lookup, dict(node.kwargs))
            out = _meta_types(node.meta.get("val"))
            if _has_placeholder(args) or _has_placeholder(kwargs):
                raise _Skip
            traced = tuple(a.meta.get("val") if isinstance(a, torch.fx.Node) else a for a in node.args)
            result = converter(Context(self.builder, loc, out, traced), *args, **kwargs)
            self.check(node, result, out)
            self.env[node] = result
        except _Skip:
            self.env[node] = _MISSING
        except (Unsupported, InferenceError) as e:
            self.report(node, str(e))

    def symbolic(self, node: torch.fx.Node, target: str) -> None:
        """Integer arithmetic on sizes (``sym_size``, ``*``, ``//``) is done on SymPy dims at trace time."""
        args = [self.lookup(a) for a in node.args]
        if _has_placeholder(args):
            self.env[node] = _MISSING
        elif target == "aten.sym_size.int":
            self.env[node] = args[0].type.shape[args[1]]
        else:
            self.env[node] = dim(SYMBOLIC[target](*[sympy.sympify(a) for a in args]))

    def lookup(self, x: Any) -> Any:
        if isinstance(x, torch.fx.Node):
            return self.env.get(x, _MISSING)
        return x

    def check(self, node: torch.fx.Node, result: Any, expected: Any) -> None:
        """Cross-check a converter's result types against torch's traced ones."""
        got = result if isinstance(result, tuple) else (result,)
        want = expected if isinstance(expected, tuple) else (expected,)
        for g, w in zip(got, want):
            if isinstance(g, Value) and w is not None and g.type != w:
                raise AssertionError(f"lamina translated {_target_name(node.target)} at {module_path(node)} to "
                                     f"{g.type}, but torch computes {w}: a frontend bug")

    def report(self, node: torch.fx.Node, reason: str) -> None:
        self.unsupported.append(UnsupportedOp(_target_name(node.target), module_path(node), node.name, reason))
        self.env[node] = _MISSING

    def outputs(self, node: torch.fx.Node) -> tuple[list[Value], list[Mutation]]:
        """The model's outputs, then the new values of what it mutates (torch.export's graph signature
        lists both among the graph's outputs)."""
        from torch.export.graph_signature import OutputKind

        outs: list[Value] = []
        updates: list[tuple[Value, str | None, int | None]] = []
        leaves = pytree.tree_leaves(node.args[0])
        for item, spec in zip(leaves, self.ep.graph_signature.output_specs):
            value = self.env.get(item) if isinstance(item, torch.fx.Node) else item
            if value is _MISSING or isinstance(value, _Placeholder):
                continue  # already reported
            if not isinstance(value, Value):
                if spec.kind == OutputKind.USER_OUTPUT:
                    self.unsupported.append(UnsupportedOp("output", "", str(item), f"non-tensor output {value!r}"))
                else:
                    self.unsupported.append(UnsupportedOp("output", "", str(item), f"a mutation of {spec.target} "
                                                          "lamina cannot express"))
                continue
            if spec.kind == OutputKind.USER_OUTPUT:
                outs.append(value)
            elif spec.kind.name in ("BUFFER_MUTATION", "PARAMETER_MUTATION"):
                updates.append((value, spec.target, None))
            elif spec.kind == OutputKind.USER_INPUT_MUTATION:  # also a buffer dynamo passes as an argument
                updates.append((value, None, self.argument_of[spec.target]))
            else:
                self.unsupported.append(UnsupportedOp("output", "", str(item), f"graph output kind {spec.kind.name} "
                                                      "is not supported"))
        mutations = [Mutation(len(outs) + i, weight, argument) for i, (_, weight, argument) in enumerate(updates)]
        return outs + [v for v, _, _ in updates], mutations


# what to do about custom operators lamina meets in popular models
_CUSTOM_OP_HINTS = {
    "transformers.grouped_mm_fallback.default": "build the model with experts_implementation='batched_mm' (its "
                                                "config's MoE path of gathers and batched GEMMs, which lamina compiles)",
}


def _why_untranslated(target: str) -> str:
    if target.startswith("aten."):
        return "no lamina translation"
    hint = _CUSTOM_OP_HINTS.get(target, "run the model through torch.compile(backend='lamina'), which runs "
                                        "such an op in PyTorch between compiled pieces")
    return f"a custom operator, opaque to lamina (its body is Python that torch.export does not trace); {hint}"


SYMBOLIC: Mapping[str, Any] = {
    "aten.sym_size.int": None,
    "mul": operator.mul, "add": operator.add, "sub": operator.sub,
    "floordiv": lambda a, b: sympy.floor(a / b), "sym_max": sympy.Max, "sym_min": sympy.Min,
}


class _Skip(Exception):
    """A node whose inputs failed to translate; its own failure would only repeat theirs."""


class _Placeholder:
    """Stands for the results of an untranslatable node so that translation goes on."""

    def __getitem__(self, index: int) -> "_Placeholder":
        return self


_MISSING = _Placeholder()


def _has_placeholder(tree: Any) -> bool:
    return any(isinstance(leaf, _Placeholder) for leaf in pytree.tree_leaves(tree))


def _meta_types(meta: Any) -> Any:
    if isinstance(meta, torch.Tensor):
        return tensor_type(meta)
    if isinstance(meta, (tuple, list)):
        return tuple(tensor_type(m) if isinstance(m, torch.Tensor) else None for m in meta)
    return None


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))
