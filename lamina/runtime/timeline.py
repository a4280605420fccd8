"""Timelines of compiled calls: when each kernel, library call and collective ran, per rank.

``CompiledModule.profile(*inputs)`` runs one call with every step of its plan timed and returns a
``Timeline``. Steps are ``compute`` (kernels, GEMMs), ``start`` (a collective issued), ``wait`` (blocked
until a started collective arrived) or ``collective`` (a blocking one). Blocked time is communication
that compute did not cover: ``exposed_ms``. ``write_chrome_trace`` writes the Chrome trace format
(Perfetto, chrome://tracing; one process per rank, compute and communication on two tracks, each
collective drawn from its start to the end of its wait); ``plot`` draws the same as a PNG (matplotlib).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .limits import Limits

COMMUNICATION = ("wait", "collective")


@dataclass(frozen=True)
class Event:
    """One step: what ran (op and module), its kind, and its start and end (seconds, ``perf_counter``)."""

    label: str
    kind: str
    start: float
    end: float
    key: str = ""  # a started collective's handle, shared by its start and wait events
    nbytes: int = 0  # bytes it reads and writes (0: sizes unknown when the plan was built; runtime/traffic.py)
    flops: int | None = None  # for GEMMs, convolutions and attention (the op registry's count)

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1e3


@dataclass
class Timeline:
    """One rank's call."""

    rank: int = 0
    events: list[Event] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return (self.events[-1].end - self.events[0].start) * 1e3 if self.events else 0.0

    @property
    def exposed_ms(self) -> float:
        """Time blocked on communication (waits and blocking collectives)."""
        return sum(e.ms for e in self.events if e.kind in COMMUNICATION)

    @property
    def compute_ms(self) -> float:
        return sum(e.ms for e in self.events if e.kind == "compute")

    @property
    def overlapped_ms(self) -> float:
        """Compute time that ran while some collective was in flight (communication hidden behind it)."""
        flights = [(s, e) for _, s, e in self.flights()]
        return sum(e.ms for e in self.events if e.kind == "compute"
                   and any(s <= e.start and e.end <= end for s, end in flights))

    def table(self, limits: "Limits | None" = None, top: int | None = None) -> str:
        """The steps by time with their rates (see ``kernel_table``)."""
        return kernel_table(self, limits, top)

    def flights(self) -> list[tuple[str, float, float]]:
        """Each collective from its start to the end of its wait (or its blocking run): label, start, end."""
        started = {e.key: e for e in self.events if e.kind == "start"}
        out = [(e.label, started[e.key].start, e.end) for e in self.events if e.kind == "wait" and e.key in started]
        return out + [(e.label, e.start, e.end) for e in self.events if e.kind == "collective"]


@dataclass(frozen=True)
class StepRow:
    """One step of a profile, its calls summed: time, share of the call, and rate against the limit."""

    label: str
    calls: int
    ms: float
    share: float
    gbps: float | None
    gflops: float | None
    of_limit: float | None


def kernel_rows(timeline: Timeline, limits: "Limits | None" = None) -> list[StepRow]:
    """The timeline's steps by label, slowest first, with GB/s of their operands and results and, for ops
    with a FLOP count (GEMMs, convolutions, attention), GFLOP/s. ``of_limit`` is the roofline's: the
    larger of GFLOP/s against ``limits.gemm_gflops`` and GB/s against ``limits.copy_gbps``, so a GEMM
    over one row (decoding: memory-bound) is judged by its bandwidth and a large one by its FLOPs."""
    grouped: dict[str, list[Event]] = {}
    for e in timeline.events:
        grouped.setdefault(e.label, []).append(e)
    total = sum(e.ms for e in timeline.events) or 1.0
    rows = []
    for label, events in grouped.items():
        ms = sum(e.ms for e in events)
        seconds = max(ms, 1e-6) / 1e3
        nbytes = sum(e.nbytes for e in events)
        flops = [e.flops for e in events if e.flops is not None]
        gflops = sum(flops) / seconds / 1e9 if flops else None
        gbps = nbytes / seconds / 1e9 if nbytes else None
        of_limit = None
        if limits is not None:
            fractions = [r / limit for r, limit in ((gflops, limits.gemm_gflops), (gbps, limits.copy_gbps))
                         if r is not None]
            of_limit = max(fractions) if fractions else None
        rows.append(StepRow(label, len(events), ms, ms / total, gbps, gflops, of_limit))
    return sorted(rows, key=lambda r: -r.ms)


def kernel_table(timeline: Timeline, limits: "Limits | None" = None, top: int | None = None) -> str:
    """``kernel_rows`` as a Markdown table (``top``: only the slowest steps)."""
    rows = kernel_rows(timeline, limits)[:top]
    lines = ["| step | calls | ms | share | GB/s | GFLOP/s | of limit |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.label} | {r.calls} | {r.ms:.3f} | {r.share:.0%} | "
                     f"{'-' if r.gbps is None else f'{r.gbps:.1f}'} | {'-' if r.gflops is None else f'{r.gflops:.1f}'} | "
                     f"{'-' if r.of_limit is None else f'{r.of_limit:.0%}'} |")
    if limits is not None:
        lines.append(f"\nlimits: {limits.describe()}")
    return "\n".join(lines)


def write_chrome_trace(timelines: Sequence[Timeline], path: str | Path) -> Path:
    """The timelines as a Chrome-trace JSON file (times relative to the earliest event)."""
    origin = min((t.events[0].start for t in timelines if t.events), default=0.0)
    records = []
    for t in timelines:
        records.append({"name": "process_name", "ph": "M", "pid": t.rank, "args": {"name": f"rank {t.rank}"}})
        for e in t.events:
            if e.kind in ("compute", *COMMUNICATION):
                records.append({"name": e.label, "cat": e.kind, "ph": "X", "pid": t.rank, "tid": 0 if e.kind ==
                                "compute" else 2, "ts": (e.start - origin) * 1e6, "dur": (e.end - e.start) * 1e6})
        for label, start, end in t.flights():
            records.append({"name": label, "cat": "in flight", "ph": "X", "pid": t.rank, "tid": 1,
                            "ts": (start - origin) * 1e6, "dur": (end - start) * 1e6})
    path = Path(path)
    path.write_text(json.dumps({"traceEvents": records, "displayTimeUnit": "ms"}))
    return path


def plot(timelines: Sequence[Timeline], path: str | Path, title: str = "") -> Path:
    """A PNG: per rank, compute, collectives in flight and blocked time as bars over time (ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origin = min((t.events[0].start for t in timelines if t.events), default=0.0)
    fig, ax = plt.subplots(figsize=(12, 1.2 + 1.1 * len(timelines)))
    rows, names = 0, []
    for t in timelines:
        tracks = [("compute", [(e.start, e.end) for e in t.events if e.kind == "compute"], "tab:blue"),
                  ("in flight", [(s, e) for _, s, e in t.flights()], "tab:orange"),
                  ("blocked", [(e.start, e.end) for e in t.events if e.kind in COMMUNICATION], "tab:red")]
        for name, spans, color in tracks:
            ax.broken_barh([((s - origin) * 1e3, (e - s) * 1e3) for s, e in spans], (rows, 0.8), color=color)
            names.append(f"rank {t.rank} {name}")
            rows += 1
    ax.set_yticks([i + 0.4 for i in range(rows)], names)
    ax.set_xlabel("ms")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
