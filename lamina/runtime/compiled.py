"""CompiledModule: called like the original model, with torch tensors in and out."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from ..errors import InputMismatchError
from ..frontends.fx import ConstRole, Imported, InputRole, ParamRole
from ..ir.core import Graph
from ..ir.dtypes import to_torch
from ..ir.binder import ShapeBinder, ShapeMismatch
from ..ir.interpreter import bind_symbols
from ..backends import backend
from ..options import CompileOptions
from ..passes.manager import PassTiming
from .state import ProgramState

Executor = Callable[[Sequence[torch.Tensor], Mapping[str, torch.Tensor]], list[torch.Tensor]]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor (no copy when contiguous); bf16 widens to f32."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def reference_executor(graph: Graph) -> Executor:
    """Runs ``graph`` with the NumPy interpreter; outputs are fresh tensors."""
    from ..ir.interpreter import interpret

    def run(inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        arrays = interpret(graph, [to_numpy(x) for x in inputs], {p.key: to_numpy(weights[p.key]) for p in graph.params})
        return [torch.from_numpy(np.array(a, copy=True)).to(to_torch(v.type.dtype)) for a, v in zip(arrays, graph.outputs)]

    return run


def _shape_only(x: torch.Tensor) -> np.ndarray:
    """An array of ``x``'s shape and no data, for binding size symbols."""
    return np.broadcast_to(np.empty((), dtype=bool), tuple(x.shape))


def _memory_of(t: torch.Tensor) -> tuple:
    """Where and how ``t`` lies in memory: two tensors with equal tuples read the same elements."""
    return t.data_ptr(), t.shape, t.stride(), t.dtype


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return _memory_of(a) == _memory_of(b)


def _describe(spec: Any) -> str:
    """'2 positional arguments and keywords (use_cache)' for a (args, kwargs) TreeSpec."""
    args, kwargs = spec.child(0), spec.child(1)
    text = f"{args.num_children} positional argument(s)"
    keys = list(kwargs.context or [])
    return text + (f" and keyword(s) {', '.join(keys)}" if keys else " and no keywords")


class CompiledModule:
    """The result of ``lamina.compile``: checks inputs, runs the backend, rebuilds outputs."""

    def __init__(self, imported: Imported, graph: Graph, executor: Executor, options: CompileOptions,
                 timings: Sequence[PassTiming] = (), model_name: str = "model") -> None:
        self.graph = graph
        self.imported = imported
        self.options = options
        self.timings = tuple(timings)
        self.model_name = model_name
        self._executor = executor
        self._weights = {k: v.detach() for k, v in imported.weights.items()}
        self._shards = {p.key: p.shard for p in graph.params if p.shard is not None}  # tensor parallelism
        self._rank: int | None = None  # set by take_shards
        self._sources: dict[str, torch.Tensor] = {}  # per split weight, the whole one its part was cut from
        # each call's shapes are checked without SymPy: by the executor when it binds sizes itself
        self._binder = None if hasattr(executor, "binder") else ShapeBinder([v.type for v in graph.user_inputs])
        self._dtypes = [to_torch(v.type.dtype) for v in graph.user_inputs]
        self._device = backend(self.options.backend).device
        self._on_cpu = self._device == "cpu"
        self._mutations = imported.mutations
        self._user_outputs = len(graph.user_outputs) - len(imported.mutations)
        # tensors the program keeps between calls (skip{policy=router|temporal}); shared when options.state is
        self.state = (options.state if options.state is not None else ProgramState()) if graph.states else None
        self._state_binder = ShapeBinder([v.type for v in graph.user_inputs]) if graph.states else None
        self._state_shapes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}  # per set of sizes
        n = len(imported.roles)
        # the common case, model(t1, ..., tn) -> tensor(s): no pytree work per call
        self._plain_args = (imported.in_spec == pytree.tree_flatten((tuple(range(n)), {}))[1]
                            and all(isinstance(r, InputRole) and r.index == i for i, r in enumerate(imported.roles)))
        self._single_output = imported.out_spec.is_leaf()
        # dynamo's calls: every argument positional (weights among them), a flat tuple back; no pytree work
        self._positional = imported.in_spec == pytree.tree_flatten((tuple(range(n)), {}))[1]
        k = self._user_outputs
        self._flat_output = next((out for out in (tuple(range(k)), list(range(k)))
                                  if imported.out_spec == pytree.tree_flatten(out)[1]), None)
        self._param_positions = [(i, r.key) for i, r in enumerate(imported.roles) if isinstance(r, ParamRole)]
        self._other_positions = [(i, r) for i, r in enumerate(imported.roles) if not isinstance(r, ParamRole)]
        # per weight passed by the caller: the tensor accepted on the last call and its memory then
        self._held_weights: dict[str, tuple[torch.Tensor, tuple]] = {}
        self._warned_about_grad = False
        # LAMINA_PROFILE=1: the first call also prints a per-step profile (a module that changes its inputs
        # or keeps state is not run the extra times a profile takes)
        self._profile_first_call = os.environ.get("LAMINA_PROFILE", "") not in ("", "0")
        self._weights_need_grad = imported.trainable
        updates = {imported.roles[m.argument].index: m.output for m in imported.mutations
                   if m.argument is not None and isinstance(imported.roles[m.argument], InputRole)}
        if updates and hasattr(executor, "update_in_place"):
            executor.update_in_place(updates)  # a KV cache written with index_copy_ need not be copied back

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._profile_first_call:
            self._profile_first_call = False
            self._print_profile(args, kwargs)
        if not self._warned_about_grad and torch.is_grad_enabled():
            self._warn_if_gradients_expected(args, kwargs)
        if self._plain_args and not kwargs and len(args) == len(self.graph.user_inputs) \
                and all(isinstance(a, torch.Tensor) for a in args):
            inputs = [self._check(i, a) for i, a in enumerate(args)]
            self._check_signature(inputs)
            outputs = self._run(inputs, self._weights)
            if self._mutations:
                outputs = self._write_back(outputs, args, self._weights)
            return outputs[0] if self._single_output else pytree.tree_unflatten(list(outputs), self.imported.out_spec)
        if self.imported.keywords:  # traced by keyword: name the positional arguments as the model does
            if len(args) > len(self.imported.keywords):
                raise InputMismatchError(f"{self.model_name} was compiled with {len(self.imported.keywords)} "
                                         f"positional argument(s) ({', '.join(self.imported.keywords)}), called with "
                                         f"{len(args)}; pass the others by keyword")
            kwargs = {**dict(zip(self.imported.keywords, args)), **kwargs}
            args = ()
        expected = self.imported.in_spec
        if self._positional and not kwargs and len(args) == len(self.imported.roles):
            flat = args
        else:
            names = list(expected.child(1).context or [])
            if set(kwargs) == set(names):
                kwargs = {k: kwargs[k] for k in names}
            flat, spec = pytree.tree_flatten((args, kwargs))
            if spec != expected:
                raise InputMismatchError(
                    f"{self.model_name} was compiled for {_describe(expected)} but was called with "
                    f"{_describe(spec)}; call it as it was traced or compile again")
        inputs: list[Any] = [None] * len(self.graph.user_inputs)
        weights, moved = self._weights, False
        held_now = self._held_weights
        for position, key in self._param_positions:  # dynamo passes the module's weights on every call
            value = flat[position]
            held = held_now.get(key)
            if held is not None and held[0] is value and held[1][0] == value.data_ptr():
                # the tensor accepted last call, still over the same memory: its shape, strides and dtype
                # are dynamo's guards (a change compiles the graph again), so the pointer is the check
                # left (a new .data); all four cost 15 us a call over a 4-layer model's 39 weights
                continue
            if not isinstance(value, torch.Tensor):
                raise InputMismatchError(f"argument {position} of {self.model_name} must be a tensor, got "
                                         f"{type(value).__name__}")
            mine = self._sources.get(key, weights.get(key))
            if mine is None or not _same_memory(mine, value):  # a new Parameter, or new .data
                weights[key], moved = self._own_part(key, value.detach()), True
            held_now[key] = (value, _memory_of(value))
        for position, role in self._other_positions:
            value = flat[position]
            if isinstance(role, ConstRole):
                if value != role.value:
                    raise InputMismatchError(
                        f"argument {position} of {self.model_name} was {role.value!r} when compiled and is {value!r} "
                        "now; lamina specialises non-tensor arguments, so compile again for the new value")
            elif not isinstance(value, torch.Tensor):
                raise InputMismatchError(f"argument {position} of {self.model_name} must be a tensor, got "
                                         f"{type(value).__name__}")
            elif isinstance(role, InputRole):
                inputs[role.index] = self._check(role.index, value)
        self._check_signature(inputs)
        if moved and hasattr(self._executor, "forget_plans"):
            self._executor.forget_plans()  # plans hold views of the weights they were built with
        outputs = self._run(inputs, weights)
        if self._mutations:
            outputs = self._write_back(outputs, flat, weights)
        if self._flat_output is not None:
            return type(self._flat_output)(outputs)
        return pytree.tree_unflatten(list(outputs), self.imported.out_spec)

    def _write_back(self, outputs: Sequence[torch.Tensor], flat_args: Sequence[Any],
                    weights: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Apply the model's in-place updates (``self.n.add_(1)``, ``x.mul_(2)``) as eager would, and
        return the model's own outputs."""
        with torch.no_grad():
            for m in self._mutations:
                target = flat_args[m.argument] if m.argument is not None else weights[m.weight]
                new = outputs[m.output]
                if new is not target and not _same_memory(new, target):  # the executor may have updated it in place
                    target.copy_(new)
        return list(outputs[:self._user_outputs])

    def _warn_if_gradients_expected(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Outputs never require grad: say so once when the caller may be training through the module."""
        if self._weights_need_grad or any(getattr(a, "requires_grad", False) for a in (*args, *kwargs.values())):
            import warnings

            self._warned_about_grad = True
            warnings.warn(f"lamina: compiled {self.model_name} computes no gradients: its outputs do not require "
                          "grad, so backward() cannot reach the weights. Call it under torch.no_grad() or "
                          "torch.inference_mode() for inference; to train, use the model itself or "
                          "torch.compile(model, backend='lamina'), which runs autograd graphs in PyTorch",
                          RuntimeWarning, stacklevel=3)

    def _run(self, inputs: Sequence[torch.Tensor], weights: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        try:
            if self.state is None:
                return self._executor(inputs, weights)
            with self.state.lock:  # the states' values in, their new values kept
                states = self.state.inputs(self.graph, self._shapes_of_states(inputs), backend(self.options.backend).device)
                outputs = self._executor([*inputs, *states], weights)
                n = len(self.graph.states)
                self.state.update(self.graph, outputs[len(outputs) - n:])
                return outputs[:len(outputs) - n]
        except ShapeMismatch:  # the executor binds the sizes itself: name the input and the shapes
            if self.options.check_inputs:
                self._check_shapes(inputs)
            raise

    def _shapes_of_states(self, inputs: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:
        """The states' shapes for a call with ``inputs`` (their size symbols bound by the inputs)."""
        assert self._state_binder is not None
        sizes = self._state_binder([x.shape for x in inputs])
        shapes = self._state_shapes.get(sizes)
        if shapes is None:
            bindings = dict(zip(self._state_binder.symbols, sizes))
            shapes = [tuple(d if isinstance(d, int) else int(d.subs(bindings)) for d in s.value.type.shape)
                      for s in self.graph.states]
            self._state_shapes[sizes] = shapes
        return shapes

    def _check_signature(self, inputs: Sequence[torch.Tensor]) -> None:
        """Shapes against the graph's types, unless the executor binds them itself (then ``_run`` reports)."""
        if self.options.check_inputs and self._binder is not None:
            try:
                self._binder([x.shape for x in inputs])
            except ValueError:
                self._check_shapes(inputs)  # names the input and the shapes
                raise

    def _check(self, index: int, value: torch.Tensor) -> torch.Tensor:
        """The input as the executor takes it: of the traced dtype, on the backend's device, contiguous,
        without autograd history. Runs on every call, so it touches as little as it can: right after
        a large kernel the caches are cold, and ``value.device`` alone then cost 11 us against
        ``is_cpu``'s 1.6 (a Xeon)."""
        if value.dtype != self._dtypes[index]:
            expected = self.graph.inputs[index].type
            raise InputMismatchError(f"input {self.graph.inputs[index].hint or index} of {self.model_name} expects "
                                     f"dtype {expected.dtype} ({to_torch(expected.dtype)}), got {value.dtype}")
        if not self._on_cpu:
            return value.detach().to(self._device).contiguous()
        if not value.is_cpu:
            raise InputMismatchError(f"input {self.graph.inputs[index].hint or index} is on {value.device}; "
                                     f"backend {self.options.backend!r} takes CPU tensors")
        return (value.detach() if value.requires_grad else value).contiguous()

    def _check_shapes(self, inputs: Sequence[torch.Tensor]) -> None:
        inputs = [_shape_only(x) for x in inputs]
        for value, array in zip(self.graph.inputs, inputs):
            try:
                bind_symbols([value.type], [array])
            except ValueError:
                raise InputMismatchError(
                    f"input {value.hint or '?'} of {self.model_name} expects shape {value.type} "
                    f"but got {list(array.shape)}; compile again for new static shapes") from None
        try:
            bind_symbols([v.type for v in self.graph.user_inputs], inputs)
        except ValueError as e:
            raise InputMismatchError(f"inputs of {self.model_name} disagree on a symbolic dim: {e}") from None

    @property
    def newton_iterations(self) -> list[int]:
        """Iterations each early-stopping Newton chunk ran in the last call (``newton{tol=...}``), in order."""
        return list(getattr(self._executor, "iterations", []))

    def profile(self, *args: Any, **kwargs: Any) -> Any:
        """A call with every step of the plan timed (after one that builds the timed plan): a
        ``runtime.timeline.Timeline`` (compute, collectives started, time blocked on them) for this process's
        rank; ``.table(runtime.limits.measure_limits())`` prints the steps with their rates against the
        machine's, ``write_chrome_trace`` and ``plot`` draw it. The module runs twice more: do not profile
        calls whose inputs it updates (a KV cache) unless that is fine."""
        from .timeline import Timeline

        executor = self._executor
        if not hasattr(executor, "timeline"):
            raise NotImplementedError(f"profile needs a kernel backend (cpu or cuda), not {self.options.backend!r}")
        executor.forget_plans()  # a timed plan, for these calls only
        executor.timeline = []
        try:
            self(*args, **kwargs)  # builds the timed plan (the ranks of a group build theirs at their own pace)
            executor.timeline.clear()
            self(*args, **kwargs)
            events = list(executor.timeline)
        finally:
            executor.timeline = None
            executor.forget_plans()
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return Timeline(rank, events)

    def _print_profile(self, args: tuple, kwargs: dict) -> None:
        from .limits import measure_limits

        if self._mutations or self.state is not None or not hasattr(self._executor, "timeline"):
            print(f"lamina: LAMINA_PROFILE: {self.model_name} is not profiled (it updates its inputs or keeps state, "
                  "or runs on the reference backend); call compiled.profile(...) on inputs it may change",
                  file=sys.stderr)
            return
        table = self.profile(*args, **kwargs).table(measure_limits(backend(self.options.backend).device))
        print(f"lamina: profile of {self.model_name}\n{table}", file=sys.stderr)

    def simulate_link(self, gbps: float | None) -> None:
        """From now on collectives take at least as long as over a ``gbps`` GB/s link (None: no delay), so
        overlap can be measured on one machine, where loopback is nearly free."""
        from .collectives import SlowLink

        if hasattr(self._executor, "link"):
            self._executor.link = SlowLink(gbps) if gbps else None
            self._executor.forget_plans()

    def take_shards(self, rank: int) -> None:
        """Keep only rank ``rank``'s part of each weight the graph splits across ranks (``Param.shard``), also
        of the whole weights later calls pass (torch.compile's)."""
        self._rank = rank
        self._held_weights.clear()  # the next call compares the caller's weights afresh
        for p in self.graph.params:
            if p.shard is not None and p.key in self._weights:  # (torch.compile passes its weights per call)
                self._weights[p.key] = self._own_part(p.key, self._weights[p.key])
        if hasattr(self._executor, "forget_plans"):
            self._executor.forget_plans()

    def _own_part(self, key: str, whole: torch.Tensor) -> torch.Tensor:
        """This rank's part of weight ``key`` (the weight itself where the graph does not split it)."""
        shard = self._shards.get(key)
        if shard is None or self._rank is None:
            return whole
        self._sources[key] = whole  # what the caller holds: a later call passing it again is no change
        return shard.take(whole, self._rank).contiguous()

    def save(self, path: Any, frozen: bool | None = None) -> None:
        """Write this module to one safetensors file that ``lamina.load(path)`` runs without the model
        (``lamina/saved.py``): its lowered graph, its weights (quantized layers packed), its call signature,
        and a frozen plan (``frozen``: see ``lamina.save``)."""
        from ..saved import save

        save(self, path, frozen)

    @property
    def quantization(self) -> list[Any]:
        """Per linear layer: its format (or float32), the bit budget's score, bytes, and the kernel that
        runs it (``passes/quant_report.py``); ``print(*compiled.quantization, sep="\n")`` shows them."""
        from ..passes.quant_report import quantization_report

        return quantization_report(self.graph, self.options.backend, self.options.kernel_language)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights this module holds: this rank's shards once sharded (``take_shards``)."""
        return sum(w.numel() * w.element_size() for w in self._weights.values())

    @property
    def plan_cache(self) -> Any:
        """The executor's plans (a ``PlanCacheInfo``: kept, limit, built in all, arena bytes), or None for
        the reference backend, which plans nothing."""
        info = getattr(self._executor, "cache_info", None)
        return info() if info is not None else None

    @property
    def newton_residuals(self) -> list[float]:
        """For each early-stopping Newton chunk of the last call, in order, the relative norm of its last
        update (``||x_k - x_(k-1)|| / ||x_k||``). A large one means the iteration had not settled and the
        result is that far from the sequential model's, unless the chunk ran as many iterations as it has
        layers (then it is exact). ``newton{iters=K,chunk=C,tol=1e-30}`` runs every chunk's K iterations
        and reports it."""
        return list(getattr(self._executor, "residuals", []))

    def __repr__(self) -> str:
        return f"CompiledModule({self.model_name}, backend={self.options.backend}, ops={len(self.graph.ops)})"
