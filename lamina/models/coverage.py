"""Model coverage: a zoo model through an entry point gives eager's numbers, or a clear refusal.

``check(model, entry)`` compiles ``model`` through ``lamina.compile`` (fallback off: it compiles
the whole model or refuses) or ``torch.compile(backend="lamina")`` (as users call it: ops lamina
cannot compile run in PyTorch between compiled pieces, and are listed), runs it on fresh inputs
with poisoned buffers and compares with eager. A refusal is fine when it names the ops
(UnsupportedOpsError); a different number, or any other exception, is a failure.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .zoo import ZooModel

ENTRY_POINTS = ("lamina.compile", "torch.compile")
TOLERANCE = 1e-4  # max|got - want| / max|want| over every output tensor


@dataclass(frozen=True)
class Result:
    model: str
    family: str
    entry: str
    status: str  # ok, refused, wrong, error
    detail: str
    error: float | None = None
    seconds: float = 0.0

    def cell(self) -> str:
        if self.status == "ok":
            return f"ok ({self.error:.0e})" + (f", in PyTorch: {self.detail}" if self.detail else "")
        return f"{self.status}: {self.detail}"


def _short(target: str) -> str:
    """``aten.repeat.default`` -> ``repeat``; ``transformers.grouped_mm_fallback.default`` -> that without ``.default``."""
    parts = target.split(".")
    return parts[1] if parts[0] == "aten" else ".".join(parts[:2])


def _tensors(out: object) -> list[torch.Tensor]:
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def relative_error(got: object, want: object) -> float:
    """The worst output's max|got - want| / max|want| (inf when shapes or finiteness differ)."""
    a, b = _tensors(got), _tensors(want)
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape or not torch.equal(x.isfinite(), y.isfinite()):
            return float("inf")
        if not y.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(x, y) else float("inf"))
            continue
        finite = y.isfinite()
        scale = y[finite].abs().max().item() if finite.any() else 0.0
        diff = (x[finite].double() - y[finite].double()).abs().max().item() if finite.any() else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def check(model: ZooModel, entry: str, seed: int = 0) -> Result:
    """Compile ``model`` through ``entry`` and compare a fresh call with eager."""
    import lamina
    from lamina.dynamo import LaminaBackend
    from lamina.errors import UnsupportedOpsError

    torch.manual_seed(seed)
    module = model.build()
    args, kwargs = model.inputs()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            if entry == "lamina.compile":
                compiled = lamina.compile(module, args, example_kwargs=kwargs, fallback=False, poison=True)
            else:
                torch._dynamo.reset()
                backend = LaminaBackend({"poison": True})
                compiled = torch.compile(module, backend=backend)
                compiled(*args, **kwargs)
            fresh_args, fresh_kwargs = model.inputs()  # other values, same shapes
            got = compiled(*fresh_args, **fresh_kwargs)
            want = module(*fresh_args, **fresh_kwargs)
    except UnsupportedOpsError as e:
        ops = sorted({_short(op.target) for op in e.ops})
        return Result(model.name, model.family, entry, "refused", ", ".join(ops), None, time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - reported as a failure of lamina
        cause: BaseException | None = e  # dynamo wraps the backend's error
        while cause is not None and not isinstance(cause, UnsupportedOpsError):
            cause = getattr(cause, "inner_exception", None) or cause.__cause__
        if isinstance(cause, UnsupportedOpsError):
            ops = sorted({_short(op.target) for op in cause.ops})
            return Result(model.name, model.family, entry, "refused", ", ".join(ops), None,
                          time.perf_counter() - start)
        return Result(model.name, model.family, entry, "error", f"{type(e).__name__}: {str(e)[:300]}", None,
                      time.perf_counter() - start)
    finally:
        if entry == "torch.compile":
            torch._dynamo.reset()
    error = relative_error(got, want)
    status = "ok" if error <= TOLERANCE else "wrong"
    in_pytorch = ""
    if entry == "torch.compile":
        graphs = f"{backend.stats.eager_graphs} whole graph(s)" if backend.stats.eager_graphs else ""
        ops = sorted({_short(line.split(" at ")[0]) for line in backend.stats.fallback_ops
                      if not line.startswith("whole graph")})
        in_pytorch = ", ".join(filter(None, [graphs, *ops]))
    detail = in_pytorch if status == "ok" else f"error {error:.2e}"
    return Result(model.name, model.family, entry, status, detail, error, time.perf_counter() - start)
