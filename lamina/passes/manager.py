"""Pass registry and pipelines: ``"canonicalize,newton{iters=2},fuse"`` run with verification,
dumps before/after any pass, and per-pass timing stamped on the result."""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..ir.core import Graph
from ..ir.errors import LaminaError
from ..ir.printer import print_graph
from ..ir.verifier import verify
from .canonicalize import canonicalize
from .channels_last import channels_last
from .fold_norms import fold_norms
from .fusion import fuse, wrap_loose_ops
from .newton import NewtonOptions, newton
from .newton_expand import newton_expand
from .quantize import QuantizeOptions, quantize
from .overlap import OverlapOptions, overlap
from .shard import ShardOptions, shard
from .skip import SkipOptions, skip


class PipelineError(LaminaError, ValueError):
    """A pipeline string names an unknown pass or gives it bad options."""


@dataclass(frozen=True)
class PassInfo:
    """A registered pass: a pure ``Graph -> Graph`` function and its options dataclass (if any)."""

    name: str
    run: Callable[..., Graph]
    options: type | None = None
    doc: str = ""
    context: tuple[str, ...] = ()  # what else it reads from the compile call (``calibration``), by keyword


PASSES: Mapping[str, PassInfo] = MappingProxyType({
    "canonicalize": PassInfo("canonicalize", canonicalize, None, canonicalize.__doc__ or ""),
    "channels-last": PassInfo("channels-last", channels_last, None, channels_last.__doc__ or ""),
    "fold-norms": PassInfo("fold-norms", fold_norms, None, fold_norms.__doc__ or ""),
    "fuse": PassInfo("fuse", fuse, None, fuse.__doc__ or ""),
    "newton": PassInfo("newton", newton, NewtonOptions, newton.__doc__ or ""),
    "newton-expand": PassInfo("newton-expand", newton_expand, None, newton_expand.__doc__ or ""),
    "quantize": PassInfo("quantize", quantize, QuantizeOptions, quantize.__doc__ or "", ("calibration",)),
    "skip": PassInfo("skip", skip, SkipOptions, skip.__doc__ or "", ("calibration",)),
    "shard": PassInfo("shard", shard, ShardOptions, shard.__doc__ or ""),
    "overlap": PassInfo("overlap", overlap, OverlapOptions, overlap.__doc__ or ""),
    "wrap": PassInfo("wrap", wrap_loose_ops, None, wrap_loose_ops.__doc__ or ""),
})


@dataclass(frozen=True)
class PassStep:
    """One pipeline entry: a pass and its options."""

    info: PassInfo
    options: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.options:
            return self.info.name
        return self.info.name + "{" + ",".join(f"{k}={v}" for k, v in self.options.items()) + "}"


@dataclass(frozen=True)
class PassTiming:
    """A pass's time and the graph's size around it: ops at the top level (``len(graph.ops)``, a ``fused``
    kernel counting once) and, in ``all_ops_after``, every op including those inside regions."""

    name: str
    seconds: float
    ops_before: int
    ops_after: int
    all_ops_after: int = 0


@dataclass(frozen=True)
class PipelineResult:
    graph: Graph
    timings: tuple[PassTiming, ...]


_STEP_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_-]*)\s*(?:\{([^}]*)\})?\s*")


def _literal(text: str) -> Any:
    low = text.strip()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(low)
        except ValueError:
            pass
    return low.strip('"')


def parse_pipeline(pipeline: str, passes: Mapping[str, PassInfo] = PASSES) -> list[PassStep]:
    """Parse ``"a,b{k=v,k2=v2}"`` into steps; raises PipelineError naming the bad part."""
    steps: list[PassStep] = []
    pos = 0
    text = pipeline.strip()
    while pos < len(text):
        m = _STEP_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise PipelineError(f"pipeline {pipeline!r}: cannot read a pass name at character {pos + 1}")
        name, opts = m.group(1), m.group(2)
        if name not in passes:
            raise PipelineError(f"pipeline {pipeline!r}: unknown pass {name!r}; known passes: {', '.join(sorted(passes))}")
        options = {}
        for item in filter(None, (opts or "").split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise PipelineError(f"pipeline {pipeline!r}: option {item!r} of {name} needs key=value")
            options[key.strip()] = _literal(value)
        info = passes[name]
        _check_options(info, options, pipeline)
        steps.append(PassStep(info, options))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise PipelineError(f"pipeline {pipeline!r}: expected ',' at character {pos + 1}")
            pos += 1
    return steps


def _check_options(info: PassInfo, options: Mapping[str, Any], pipeline: str) -> None:
    if options and info.options is None:
        raise PipelineError(f"pipeline {pipeline!r}: pass {info.name} takes no options")
    if info.options is not None:
        known = {f.name for f in dataclasses.fields(info.options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise PipelineError(f"pipeline {pipeline!r}: pass {info.name} has no option {unknown[0]!r}; "
                                f"it takes {', '.join(sorted(known))}")
        for f in dataclasses.fields(info.options):
            wanted = _OPTION_TYPES.get(str(f.type))
            value = options.get(f.name)
            if f.name in options and wanted and (not isinstance(value, wanted) or
                                                 (isinstance(value, bool) and wanted is not bool)):
                raise PipelineError(f"pipeline {pipeline!r}: option {f.name} of {info.name} must be {f.type}, "
                                    f"got {value!r}")


_OPTION_TYPES: Mapping[str, Any] = MappingProxyType({"int": int, "float": (int, float), "str": str, "bool": bool})


def run_steps(graph: Graph, steps: Sequence[PassStep], *, dump_dir: str | Path | None = None,
              dump_before: Sequence[str] = (), dump_after: Sequence[str] = (), check: bool = True,
              calibration: Any = None) -> PipelineResult:
    """Run passes in order; verify after each; write dumps; stamp each pass's name and time on the graph.
    ``calibration`` (a ``lamina.calibrate`` result) goes to the passes that read it."""
    context = {"calibration": calibration}
    timings = []
    directory = Path(dump_dir) if dump_dir else None
    if directory:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "00-input.lamina").write_text(print_graph(graph, history=True))
    for i, step in enumerate(steps, 1):
        name = step.info.name
        if name in dump_before:
            print(f"// ----- IR before {step} -----\n{print_graph(graph)}")
        before = len(graph.ops)
        start = time.perf_counter()
        extra = {name: context[name] for name in step.info.context}
        if step.info.options is not None:
            result = step.info.run(graph, step.info.options(**step.options), **extra)
        else:
            result = step.info.run(graph, **extra)
        seconds = time.perf_counter() - start
        if check:
            try:
                verify(result)
            except LaminaError as e:
                raise LaminaError(f"pass {step} produced invalid IR: {e}") from e
        notes = result.history[len(graph.history):] if result.history[:len(graph.history)] == graph.history else ()
        result = result.replace(history=graph.history + (f"{step}: {seconds * 1e3:.2f} ms",) + notes)  # and its notes
        timings.append(PassTiming(str(step), seconds, before, len(result.ops), sum(1 for _ in result.walk())))
        if directory:
            (directory / f"{i:02d}-{name}.lamina").write_text(print_graph(result, history=True))
        if name in dump_after:
            print(f"// ----- IR after {step} -----\n{print_graph(result)}")
        graph = result
    return PipelineResult(graph, tuple(timings))


def run_pipeline(graph: Graph, pipeline: str, **kwargs: Any) -> Graph:
    """Run the passes named in ``pipeline`` on ``graph`` and return the result."""
    return run_steps(graph, parse_pipeline(pipeline), **kwargs).graph


def default_pipeline(backend: str = "cpu") -> str:
    """The pipeline ``lamina.compile`` runs for ``backend`` when none is given."""
    from ..backends import UnknownBackendError, backend as entry

    try:
        return entry(backend).default_pipeline
    except UnknownBackendError as e:
        raise PipelineError(str(e)) from None


def backend_pipeline(pipeline: str | None, backend: str) -> list[PassStep]:
    """The steps a backend runs for ``pipeline`` (None: its default): the user's passes, then the lowering
    steps its executor needs where they are missing — ``newton-expand`` right after the last ``newton``,
    ``wrap`` (loose kernel ops into kernels) at the end. Dumps and ``compiled.timings`` show them."""
    from ..backends import backend as entry

    lowering = entry(backend).lowering
    steps = parse_pipeline(pipeline if pipeline is not None else default_pipeline(backend))
    names = [s.info.name for s in steps]
    if "newton-expand" in lowering and "newton" in names:
        last = len(names) - 1 - names[::-1].index("newton")
        if "newton-expand" not in names[last:]:
            steps.insert(last + 1, PassStep(PASSES["newton-expand"]))
    if "wrap" in lowering and (not steps or steps[-1].info.name != "wrap"):
        steps.append(PassStep(PASSES["wrap"]))
    return steps
