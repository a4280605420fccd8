"""``LAMINA_DUMP_DIR``: per compiled graph, its input, IR after each pass, kernels, wrapper, summary.

Layout: ``<dump_dir>/graph_<n>/`` with ``input_graph.py`` (dynamo's graph code), ``ir/`` (the
pass manager's numbered IR files), ``kernels/<name>.py`` (generated sources), ``wrapper.py``
(the plan of the example shapes) and ``summary.json`` (ops, kernels, fallbacks, times).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx


@dataclass
class GraphDump:
    directory: Path

    @property
    def ir_dir(self) -> Path:
        return self.directory / "ir"

    @staticmethod
    def create(root: Path | None, gm: torch.fx.GraphModule) -> GraphDump | None:
        if root is None:
            return None
        root.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:  # the next free graph_<n>; mkdir is atomic, so concurrent compiles do not collide
            try:
                directory = root / f"graph_{n}"
                directory.mkdir()
                break
            except FileExistsError:
                n += 1
        (directory / "input_graph.py").write_text(gm.code)
        return GraphDump(directory)

    def finish(self, compiled: Any, fallbacks: Sequence[str], seconds: float,
               example: Sequence[torch.Tensor] = ()) -> None:
        summary: dict[str, Any] = {"fallbacks": list(fallbacks), "compile_seconds": round(seconds, 3)}
        if compiled is not None:
            graph = compiled.graph
            summary["ops"] = dict(Counter(op.name for op in graph.ops))
            summary["pass_seconds"] = {t.name: round(t.seconds, 4) for t in compiled.timings}
            executor = compiled._executor
            sources = executor.sources() if hasattr(executor, "sources") else {}
            summary["fused_kernels"] = sorted(sources)
            kernels = self.directory / "kernels"
            kernels.mkdir(exist_ok=True)
            for name, source in sources.items():
                (kernels / f"{name}.py").write_text(source)
            if hasattr(executor, "plan_for") and example:
                from ..frontends.fx import InputRole, ParamRole

                roles = compiled.imported.roles
                inputs = [t for t, role in zip(example, roles) if isinstance(role, InputRole)]
                weights = {**compiled._weights,
                           **{role.key: t.detach() for t, role in zip(example, roles) if isinstance(role, ParamRole)}}
                plan = executor.plan_for(inputs, weights)
                (self.directory / "wrapper.py").write_text(plan.source)
                summary["launches"] = plan.launches
        (self.directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
