"""The ``lamina`` command: dump IR, run passes on IR text, list ops, run a saved module, run the demo."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import LaminaError


EXTRAS = {"transformers": "hf", "iree": "mlir", "cupy": "cuda", "numba_cuda": "cuda"}  # module -> lamina's extra


def load_factory(spec: str) -> tuple[Any, tuple, dict | None]:
    """Call ``FILE.py:FACTORY``; it returns ``(model, example_inputs)`` or ``(model, args, kwargs)``."""
    path_text, sep, factory_name = spec.rpartition(":")
    if not sep or not path_text or not factory_name:
        raise LaminaError(f"expected FILE.py:FACTORY, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise LaminaError(f"no such file: {path}")
    module_spec = importlib.util.spec_from_file_location(f"lamina_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise LaminaError(f"cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        module_spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0])
        how = f"pip install 'lamina[{extra}]'" if extra else f"pip install {e.name}"
        raise LaminaError(f"{path} imports {e.name}, which is not installed: {how}") from None
    finally:
        sys.path.pop(0)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        names = sorted(n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise LaminaError(f"{path} has no function {factory_name!r}; it defines {', '.join(names) or 'none'}")
    result = factory()
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise LaminaError(f"{spec} must return (model, example_inputs) or (model, args, kwargs), got {type(result).__name__}")
    model, args = result[0], result[1]
    args = args if isinstance(args, tuple) else (args,)
    return model, args, result[2] if len(result) == 3 else None


def cmd_dump(ns: argparse.Namespace) -> int:
    from .api import trace
    from .ir.dot import to_dot
    from .ir.printer import print_graph
    from .passes.manager import backend_pipeline, run_steps

    if ns.target.endswith(".lamina"):
        from .frontends.text import read_graph

        graph = read_graph(ns.target)
    else:
        model, args, kwargs = load_factory(ns.target)
        graph = trace(model, args, kwargs)
    steps = backend_pipeline(ns.pipeline, ns.backend)  # the user's passes and the backend's lowering steps
    if ns.after is not None:
        names = [s.info.name for s in steps]
        if ns.after not in names:
            from .passes.manager import PASSES

            raise LaminaError(f"--after {ns.after}: that pass is not in the pipeline ({', '.join(names) or 'empty'}); "
                              f"give --pipeline with it (known passes: {', '.join(sorted(PASSES))})")
        steps = steps[: len(names) - names[::-1].index(ns.after)]
    elif not (ns.kernels or ns.wrapper):
        steps = []  # plain dumps show the traced graph; kernels and wrappers come from the whole pipeline
    graph = run_steps(graph, steps).graph
    if ns.kernels or ns.wrapper:
        text = _kernels_and_wrapper(graph, ns)
    elif ns.format == "text":
        text = print_graph(graph, history=ns.history) + _quantization_comment(graph, ns.backend)
    elif ns.format == "dot":
        text = to_dot(graph)
    else:
        from .ir.mlir import to_mlir_text

        text = to_mlir_text(graph)
    if ns.output:
        Path(ns.output).write_text(text)
        print(f"wrote {ns.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _quantization_comment(graph: Any, backend: str) -> str:
    """For a graph with quantized layers: what each linear layer became and which kernel runs it, as
    ``//`` comments the parser skips."""
    from .passes.quant_report import quantization_report

    if not any(op.name == "qlinear" for op in graph.ops):
        return ""
    rows = quantization_report(graph, backend)
    return f"// quantization ({backend} backend):\n" + "".join(f"//   {row}\n" for row in rows)


def _kernels_and_wrapper(graph: Any, ns: argparse.Namespace) -> str:
    """Generated kernel sources (``--kernels``) and the cpu wrapper (``--wrapper``) of a graph."""
    from .codegen.lower import lower_kernels

    parts = []
    if ns.kernels:
        seen = set()
        lowered = lower_kernels(graph, split_last=ns.kernel_target == "cpu")
        sources = _kernel_sources([k for _, k in lowered], ns.kernel_target)
        uses = Counter(name for name, _ in sources)
        for (op, _), (name, source) in zip(lowered, sources):
            if name in seen:
                continue
            seen.add(name)
            shared = f", shared by {uses[name]} uses of other sizes" if uses[name] > 1 else ""
            parts.append(f"# ---- {name} ({op.loc.module or 'top level'}{shared}) ----\n{source}")
    if ns.wrapper:
        import torch

        from .ir.dtypes import to_torch
        from .runtime.cpu import CpuExecutor

        if any(not isinstance(d, int) for v in graph.inputs for d in v.type.shape):
            raise LaminaError("--wrapper needs static input shapes")
        executor = CpuExecutor(graph)
        inputs = [torch.zeros(tuple(v.type.shape), dtype=to_torch(v.type.dtype)) for v in graph.inputs]
        weights = {p.key: torch.zeros(tuple(p.value.type.shape), dtype=to_torch(p.value.type.dtype))
                   for p in graph.params}
        plan = executor.plan_for(inputs, weights)
        parts.append(f"# ---- wrapper: {plan.launches} launches, arena {plan.memory.peak} bytes "
                     f"(without reuse {plan.memory.naive}) ----\n{plan.source}")
    return "\n".join(parts)


def _kernel_sources(kernels: list[Any], target: str) -> list[tuple[str, str]]:
    """(name, source) of each kernel as the backend runs it; on the cpu, kernels equal but for their
    sizes share one source (``codegen/shared_kernels.py``)."""
    if target == "cpu":
        from .runtime.cpu import CpuTarget

        return [(ck.kernel.name, ck.source) for ck in CpuTarget().compiled_kernels(kernels)]
    if target == "cuda":
        from .codegen.cuda_c import cuda_source

        return [(k.name, cuda_source(k)) for k in kernels]
    from .codegen.cuda_numba import cuda_numba_source

    return [(k.name, cuda_numba_source(k)) for k in kernels]


SPLIT_MARKER = "// -----"


def cmd_opt(ns: argparse.Namespace) -> int:
    """Parse IR text, run a pipeline, print the result (``mlir-opt`` for lamina)."""
    from .ir.parser import parse
    from .ir.printer import print_graph
    from .passes.manager import parse_pipeline, run_steps

    from .frontends.text import read_text

    text = sys.stdin.read() if ns.file == "-" else read_text(ns.file)
    steps = parse_pipeline(ns.pipeline)
    chunks = split_input(text) if ns.split_input_file else [(0, text)]
    printed = []
    for offset, chunk in chunks:
        graph = parse("\n" * offset + chunk, filename=ns.file)  # line numbers of errors are the file's
        printed.append(print_graph(run_steps(graph, steps).graph))
    out = f"{SPLIT_MARKER}\n".join(printed)
    if ns.output:
        Path(ns.output).write_text(out)
    else:
        sys.stdout.write(out)
    return 0


def split_input(text: str) -> list[tuple[int, str]]:
    """The cases of a file split at ``// -----`` lines, each with the number of lines before it."""
    cases, start, lines = [], 0, text.splitlines(keepends=True)
    for i, line in enumerate(lines + [SPLIT_MARKER]):
        if line.strip() == SPLIT_MARKER:
            cases.append((start, "".join(lines[start:i])))
            start = i + 1
    return cases


def cmd_ops(ns: argparse.Namespace) -> int:
    from .ir.ops import REGISTRY

    width = max(map(len, REGISTRY))
    for name, opdef in sorted(REGISTRY.items()):
        operands = ", ".join(opdef.operands)
        attrs = ", ".join(f"{k}: {v.kind}" for k, v in opdef.attrs.items())
        print(f"{name:<{width}}  ({operands}){' {' + attrs + '}' if attrs else ''}  -- {opdef.doc}")
    return 0


def cmd_run(ns: argparse.Namespace) -> int:
    from .run_saved import run_saved
    from .saved import is_saved

    path = Path(ns.file)
    if not is_saved(path):
        raise LaminaError(f"{path} is not a module saved by lamina.save (IR text runs through `lamina opt`)")
    sizes = {}
    for item in ns.size:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise LaminaError(f"--size {item}: expected NAME=N, e.g. --size s0=128")
        sizes[name] = int(value)
    print(run_saved(path, ns.repeats, sizes, ns.backend).table(path))
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(repeats=ns.repeats, backend=ns.backend)


def build_parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS

    parser = argparse.ArgumentParser(prog="lamina", description="lamina: a compiler for PyTorch models")
    sub = parser.add_subparsers(dest="command", required=True)
    dump = sub.add_parser("dump", help="print a model's IR", description=(
        "Trace FILE.py:FACTORY (a function returning (model, example_inputs) or (model, args, kwargs)), "
        "or read IR text from FILE.lamina, and print the IR, optionally after the passes of a pipeline up to --after."))
    dump.add_argument("target", metavar="FILE.py:FACTORY | FILE.lamina")
    dump.add_argument("--after", metavar="PASS", help="run the pipeline up to and including this pass")
    dump.add_argument("--pipeline", help="pass pipeline, e.g. 'canonicalize' (default: the backend's)")
    dump.add_argument("--backend", default="cpu", help="backend whose default pipeline is used")
    dump.add_argument("--format", choices=("text", "mlir", "dot"), default="text",
                      help="dot: Graphviz source (render it with Graphviz's dot, e.g. | dot -Tsvg > g.svg)")
    dump.add_argument("--history", action="store_true", help="lead the text with the passes that ran")
    dump.add_argument("--kernels", action="store_true", help="print the generated kernel sources instead of the IR")
    dump.add_argument("--wrapper", action="store_true", help="print the cpu backend's generated wrapper")
    dump.add_argument("--target", dest="kernel_target", choices=("cpu", "cuda", "numba-cuda"), default="cpu",
                      help="kernel language for --kernels")
    dump.add_argument("-o", "--output", metavar="OUT", help="write to a file instead of stdout")
    dump.set_defaults(run=cmd_dump)
    opt = sub.add_parser("opt", help="run passes on IR text and print the result", description=(
        "Parse FILE.lamina (- for stdin), run the pipeline's passes as written (no backend lowering "
        "steps are added) and print the IR after them."))
    opt.add_argument("file", metavar="FILE.lamina")
    opt.add_argument("-p", "--pipeline", required=True, help="pass pipeline, e.g. 'canonicalize,fuse'")
    opt.add_argument("--split-input-file", action="store_true",
                     help="treat '// -----' lines as separators between independent graphs (as mlir-opt)")
    opt.add_argument("-o", "--output", metavar="OUT", help="write to a file instead of stdout")
    opt.set_defaults(run=cmd_opt)
    ops = sub.add_parser("ops", help="list every op in the registry")
    ops.set_defaults(run=cmd_ops)
    run = sub.add_parser("run", help="load a saved module, run it on random inputs and print timings", description=(
        "Load FILE (written by lamina.save / compiled.save) without tracing, call it on random inputs of its "
        "saved shapes, and print the load time, the first call's and the median of --repeats calls."))
    run.add_argument("file", metavar="FILE")
    run.add_argument("--repeats", type=int, default=10, help="timed calls after the first (median reported)")
    run.add_argument("--size", action="append", default=[], metavar="NAME=N",
                     help="a value for a symbolic input size (repeatable)")
    run.add_argument("--backend", default=None, choices=tuple(BACKENDS), help="default: the saved backend")
    run.set_defaults(run=cmd_run)
    demo = sub.add_parser("demo", help="compile example models on the CPU, check them against eager PyTorch")
    demo.add_argument("--repeats", type=int, default=5, help="timed runs per model (median reported)")
    demo.add_argument("--backend", default="cpu", choices=tuple(BACKENDS))
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.run(ns)
    except LaminaError as e:
        print(f"lamina: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
