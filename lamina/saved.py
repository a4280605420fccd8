"""A compiled module as one safetensors file: ``compiled.save(path)``, ``lamina.load(path)``.

The file holds the weights the compiled graph reads (quantized layers as their packed integers, scales
and zero points: the float weights they came from are not saved) and, in the safetensors header's
metadata, the graph's text form, how call arguments and results map onto it (torch pytree specs as
JSON), the backend, and a SHA-256 of every tensor's bytes. ``lamina.load`` parses the graph, checks
the tensors against it and the checksum, and builds the executor without tracing, so the model's
Python class is not needed (the classes of its arguments and results are: torch's pytree serializes
them by name, as transformers registers its outputs and caches). A result type that torch's pytree
cannot serialize is an error ``save`` names.

The file also carries the compiled kernels (``codegen/cache_bundle.py``), installed into the kernel
cache on load so that a fresh process or machine starts without compiling. A module with fixed shapes
on the cpu backend also carries a frozen plan (``runtime/freeze.py``, ``runtime/frozen.py``): its
wrapper code, how to rebuild each object it uses, and its kernels as one C shared library, so that
``lamina.load`` returns a ``FrozenModule`` without parsing, planning, SymPy or Numba (the first output
of the GPT-2 stack of ``benchmarks/warm_start.py`` within 0.1 s). The plan is used only on a machine
with the same lamina and torch and the CPU features its kernels were compiled for; otherwise the
module is planned again from its graph. Like an AOTInductor package's shared library, the kernels and
the plan's code run as they are: ``lamina.load(path, compiled_kernels=False)`` ignores them and
compiles every kernel from the graph, and then nothing in the file is executable (no pickle, no code:
the weights, the graph text and JSON).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.utils._pytree as pytree

from .errors import LaminaError
from .log import logger

if TYPE_CHECKING:
    from .ir.core import Graph

FORMAT = "lamina-compiled-module"
VERSION = "2"  # 2: the kernel cache entries travel in the file (tensors under KERNELS)
READS = ("1", "2")
KERNELS = "kernels/"  # tensor names of bundled kernel files (a weight's key never holds a '/')
FROZEN = "frozen/"  # the frozen plan's kernel library and stored buffers (see runtime/frozen.py)


class SaveError(LaminaError, ValueError):
    """A compiled module that cannot be saved, or a file that cannot be loaded; the message says why."""


def save(compiled: Any, path: str | Path, frozen: bool | None = None) -> None:
    """Write ``compiled`` (a CompiledModule) to ``path`` (see the module doc). ``frozen``: with a frozen
    plan when the module allows one and it runs about as fast as the module (None, the default), whenever
    the module allows one (True), or never (False)."""
    from .ir.printer import print_graph
    from safetensors.torch import save_file

    imported = compiled.imported
    graph, weights = fold_quantized_weights(compiled.graph, compiled._weights)
    try:
        specs = {"in_spec": pytree.treespec_dumps(imported.in_spec), "out_spec": pytree.treespec_dumps(imported.out_spec)}
    except Exception as e:  # noqa: BLE001 - torch raises several kinds for unserializable node types
        raise SaveError(f"cannot save {compiled.model_name}: its arguments or results are not only tensors, tuples, "
                        f"lists, dicts and types registered with torch's pytree under a serialized name ({e}); "
                        "compile a wrapper that takes and returns tensors") from None
    roles = [_role_json(r) for r in imported.roles]
    tensors = {key: weights[key].detach().contiguous().clone() for key in (p.key for p in graph.params)}
    plan = _frozen(compiled, graph, tensors, frozen) if frozen is not False else None
    kernels = _kernel_files(compiled)
    tensors.update({KERNELS + f.path: torch.frombuffer(bytearray(f.data), dtype=torch.uint8) for f in kernels})
    if plan is not None:
        buffers, library = plan[1], plan[2]
        tensors.update({f"{FROZEN}buffer.{k}": t for k, t in buffers.items()})
        tensors[f"{FROZEN}library"] = torch.frombuffer(bytearray(library), dtype=torch.uint8)
    metadata = {
        "format": FORMAT, "version": VERSION, "ir": print_graph(graph), "backend": compiled.options.backend,
        "kernel_language": compiled.options.kernel_language or "",
        "model_name": compiled.model_name, "roles": json.dumps(roles), **specs,
        "mutations": json.dumps([asdict(m) for m in imported.mutations]), "keywords": json.dumps(imported.keywords),
        "kernel_mtimes": json.dumps({f.path: f.mtime_ns for f in kernels}), "built_with": json.dumps(built_with()),
        "checksum": _checksum(tensors),
    }
    if plan is not None:
        metadata["frozen"] = plan[0].to_json()
    save_file(tensors, str(path), metadata)


def _frozen(compiled: Any, graph: "Graph", tensors: Mapping[str, torch.Tensor],
            always: bool | None) -> tuple[Any, dict, bytes] | None:
    """The module's frozen plan over the tensors the file stores (``runtime/freeze.py``), or None (logged)
    when it has none: another backend, symbolic shapes, in-place updates of its arguments, a result that
    is not a tensor or a tuple or list of them, no C compiler, or (unless ``always``) C kernels slower
    than the module's own."""
    from .runtime.freeze import NotFreezable, freeze

    imported = compiled.imported
    output = "single" if imported.out_spec.is_leaf() else getattr(compiled, "_flat_output", None)
    why = ("it runs on the {} backend".format(compiled.options.backend) if compiled.options.backend != "cpu" else
           "its arguments are not only tensors" if not compiled._plain_args else
           "it updates its arguments in place" if imported.mutations else
           "its result is not a tensor or a tuple or list of tensors" if output is None else None)
    if why is None:
        try:
            kind = "single" if output == "single" else type(output).__name__
            planned = None if always else (lambda xs: compiled._run(xs, compiled._weights))
            return freeze(graph, {p.key: tensors[p.key] for p in graph.params}, kind, planned)
        except NotFreezable as e:
            why = str(e)
    logger("cache").info("%s: saved without a frozen plan (%s); lamina.load will plan it again",
                         compiled.model_name, why)
    return None


def is_saved(path: str | Path) -> bool:
    """Whether ``path`` starts like a safetensors file (a little-endian header length, then JSON):
    how ``lamina dump`` and ``lamina run`` tell a saved module from IR text."""
    try:
        with open(path, "rb") as f:
            head = f.read(10)
    except OSError:
        return False
    return len(head) == 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") > 0


def saved_graph_text(path: str | Path) -> str:
    """The IR text in the metadata of the module saved at ``path`` (the weights are not read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors reports damage as several error types
        raise SaveError(f"{path} is damaged or not a safetensors file ({type(e).__name__}: {e})") from None
    if metadata.get("format") != FORMAT or "ir" not in metadata:
        raise SaveError(f"{path} is a safetensors file but not a saved lamina module")
    return metadata["ir"]


def built_with() -> dict[str, str]:
    """What the bundled kernels were compiled by and for: lamina, torch, Numba, Python and the CPU."""
    import platform

    import numba
    import llvmlite.binding as llvm

    from . import __version__

    return {"lamina": __version__, "torch": torch.__version__, "numba": numba.__version__,
            "python": platform.python_version(), "cpu": llvm.get_host_cpu_name()}


def _kernel_files(compiled: Any) -> list:
    from .codegen.cache_bundle import bundle

    cache = getattr(getattr(compiled._executor, "target", None), "cache", None)
    return bundle(cache) if cache is not None else []


def load(path: str | Path, backend: str | None = None, compiled_kernels: bool = True, frozen: bool = True) -> Any:
    """The module saved at ``path``, on its saved backend or ``backend``; with ``compiled_kernels=False``
    the kernels in the file are ignored (see the module doc). A file with a frozen plan that this machine
    can run (same lamina and torch, a CPU with the features its kernels were compiled for) gives a
    ``FrozenModule`` (``runtime/frozen_module.py``): it behaves as the CompiledModule and reaches its
    first output without tracing, planning or compiling; ``frozen=False`` plans it again instead."""
    path = Path(path)
    metadata, tensors = _read(path)
    kernels = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith(KERNELS)]}
    parts = {k[len(FROZEN):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(FROZEN)]}

    def build_full() -> Any:
        if compiled_kernels:
            _install_kernels(path, kernels, metadata)
        return _compiled_module(path, metadata, tensors, backend)

    if frozen and compiled_kernels and backend in (None, metadata.get("backend")) and "frozen" in metadata:
        module = _thawed(path, metadata, tensors, parts, build_full)
        if module is not None:
            return module
    return build_full()


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a saved module, its format, version and checksum checked."""
    from safetensors import safe_open

    if not path.is_file():
        raise SaveError(f"lamina.load: {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors reports damage as several error types
        raise SaveError(f"lamina.load: {path} is damaged or not a safetensors file ({type(e).__name__}: {e}); "
                        "save the module again") from None
    if metadata.get("format") != FORMAT:
        raise SaveError(f"lamina.load: {path} is a safetensors file but not a saved lamina module")
    if metadata.get("version") not in READS:
        raise SaveError(f"lamina.load: {path} was written by another version of lamina (format version "
                        f"{metadata.get('version')}, this one reads {', '.join(READS)}); save it again")
    if _checksum(tensors) != metadata.get("checksum"):
        raise SaveError(f"lamina.load: the weights in {path} do not match its checksum (the file is damaged); "
                        "save the module again")
    return metadata, tensors


def _thawed(path: Path, metadata: Mapping[str, str], weights: Mapping[str, torch.Tensor],
            frozen: Mapping[str, torch.Tensor], build_full: Callable[[], Any]) -> Any:
    """A FrozenModule of the file's frozen plan, or None (logged) when this machine cannot run it."""
    from .runtime.frozen import FrozenPlan, incompatibility, thaw
    from .runtime.frozen_module import FrozenModule
    from .runtime.native_kernels import NativeLibrary

    try:
        plan = FrozenPlan.from_json(metadata["frozen"])
    except (ValueError, KeyError, TypeError) as e:
        logger("cache").info("%s: its frozen plan is not readable here (%s); planning it again", path, e)
        return None
    why = incompatibility(plan.built_with)
    if why is None and "library" not in frozen and plan.functions:
        why = "its kernel library is missing"
    if why is not None:
        logger("cache").info("%s: not using its frozen plan (%s); planning it again", path, why)
        return None
    try:
        library = NativeLibrary.load(frozen["library"].numpy().tobytes(), plan.functions) if plan.functions else None
        buffers = {k[len("buffer."):]: t for k, t in frozen.items() if k.startswith("buffer.")}
        run = thaw(plan, weights, buffers, library)
    except (OSError, AttributeError, KeyError, ValueError) as e:  # a library the loader refuses, a missing part
        logger("cache").warning("%s: its frozen plan does not load here (%s: %s); planning it again",
                                path, type(e).__name__, e)
        return None
    return FrozenModule(run, plan, build_full, metadata.get("model_name", "model"))


def _compiled_module(path: Path, metadata: Mapping[str, str], tensors: dict[str, torch.Tensor],
                     backend: str | None) -> Any:
    """The CompiledModule of a file's graph (parsed and planned here)."""
    from .api import compile_lowered
    from .frontends.fx import Imported, Mutation
    from .ir.errors import IRParseError
    from .ir.parser import parse

    try:
        graph = parse(metadata["ir"], filename=f"{path} (saved graph)")
    except IRParseError as e:
        raise SaveError(f"lamina.load: the graph in {path} does not parse: {e}") from None
    for p in graph.params:
        t = tensors.get(p.key)
        if t is None or tuple(t.shape) != tuple(p.value.type.shape):
            raise SaveError(f"lamina.load: weight {p.key} in {path} is {'missing' if t is None else list(t.shape)}, "
                            f"the graph needs {p.value.type}")
    imported = Imported(graph, tensors, tuple(_role(r) for r in json.loads(metadata["roles"])),
                        pytree.treespec_loads(metadata["in_spec"]), pytree.treespec_loads(metadata["out_spec"]),
                        tuple(Mutation(**m) for m in json.loads(metadata["mutations"])),
                        keywords=tuple(json.loads(metadata["keywords"])))
    # the kernel language it was compiled with, on its own backend (files from before it was recorded: the default)
    language = (metadata.get("kernel_language") or None) if backend in (None, metadata["backend"]) else None
    return compile_lowered(imported, backend or metadata["backend"], metadata.get("model_name", "model"), language)


def _install_kernels(path: Path, files: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Put the file's kernels into this machine's kernel cache (entries it lacks). Kernels built by
    another Numba or for another CPU are installed too, but Numba treats them as misses and compiles
    them from their sources (logged), so they cost time, never a wrong result."""
    from .codegen.cache import KernelCache
    from .codegen.cache_bundle import BundledFile, install
    from .log import logger

    if not files:
        return
    try:
        mtimes = json.loads(metadata.get("kernel_mtimes", "{}"))
        saved_with = json.loads(metadata.get("built_with", "{}"))
    except json.JSONDecodeError:
        raise SaveError(f"lamina.load: the kernel list in {path} is damaged; save the module again") from None
    bundled = [BundledFile(key[len(KERNELS):], t.numpy().tobytes(), int(mtimes.get(key[len(KERNELS):], 0)))
               for key, t in files.items()]
    here = built_with()
    differ = [f"{k} {saved_with.get(k)} (here {v})" for k, v in here.items()
              if k in ("numba", "cpu", "python") and saved_with.get(k) != v]
    if differ:
        logger("cache").info("%s: kernels were compiled with %s; those are compiled again here",
                             path, ", ".join(differ))
    install(KernelCache(), bundled)


def fold_quantized_weights(graph: "Graph", weights: Mapping[str, torch.Tensor]) -> tuple["Graph", dict[str, torch.Tensor]]:
    """``graph`` with each ``quantize`` of a weight replaced by new parameters holding its results
    (``KEY.qweight``, ``KEY.scales``, ``KEY.zeros``), and the weights those need; float weights read
    only by ``quantize`` are dropped."""
    from .ir import quant_format
    from .ir.builder import OpEmitter
    from .ir.core import Param, Value
    from .passes.rewrite import remove_dead

    keys = {p.value: p.key for p in graph.params}
    transposed = {op.results[0]: keys[op.operands[0]] for op in graph.ops  # [in, out] weights, as [out, in]
                  if op.name == "permute" and op.operands[0] in keys and list(op.attrs["dims"]) == [1, 0]}
    replaced: dict[Value, Value] = {}
    params = list(graph.params)
    folded = dict(weights)
    out = OpEmitter()
    for op in graph.ops:
        source = op.operands[0] if op.name == "quantize" else None
        if source is not None and (source in keys or source in transposed):
            key = keys.get(source) or transposed[source]
            weight = weights[key] if source in keys else weights[key].t()
            stored = quant_format.quantize(weight, quant_format.QuantFormat.of(op.attrs))
            for name, value, tensor in zip(("qweight", "scales", "zeros"), op.results, stored):
                new = Value(value.type, f"{key}.{name}")
                params.append(Param(f"{key}.{name}", new))
                folded[f"{key}.{name}"] = tensor
                replaced[value] = new
            continue
        out.append(op.replace(operands=tuple(replaced.get(v, v) for v in op.operands)))
    ops = remove_dead(out.ops, graph.outputs)  # the transposing views the folded quantize ops read
    used = {v for op in ops for v in op.operands} | set(graph.outputs)
    params = [p for p in params if p.value in used]
    return graph.replace(params=tuple(params), ops=tuple(ops)), {p.key: folded[p.key] for p in params}


def _checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _role_json(role: Any) -> dict[str, Any]:
    from .frontends.fx import ConstRole, InputRole, ParamRole

    if isinstance(role, InputRole):
        return {"input": role.index}
    if isinstance(role, ParamRole):
        return {"param": role.key}
    if isinstance(role, ConstRole) and (role.value is None or isinstance(role.value, (bool, int, float, str))):
        return {"const": role.value}
    raise SaveError(f"cannot save a module traced with the constant argument {role!r}; only None, numbers and "
                    "strings are saved")


def _role(data: Mapping[str, Any]) -> Any:
    from .frontends.fx import ConstRole, InputRole, ParamRole

    if "input" in data:
        return InputRole(data["input"])
    if "param" in data:
        return ParamRole(data["param"])
    return ConstRole(data["const"])
