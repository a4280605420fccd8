"""``lamina.calibrate(model, batches)``: per-layer statistics from one pass over calibration batches.

What it records, for the passes that choose per layer (quantize's bit budget now, skip scheduling
next):

- per residual block (each member of an ``nn.ModuleList`` whose output has its input's shape): the
  mean cosine similarity of its input and output over all tokens, and the mean relative update
  ``||out - in|| / ||in||``. A block whose output is close to its input changes little and matters
  less (Layer-Wise Quantization's first importance measure). The same per sublayer where the block's
  attention output can be found (a child module named like ``attn`` / ``self_attn`` / ``attention``,
  or else a linear ``c_proj`` / ``o_proj`` / ``out_proj`` directly in the block): the attention
  sublayer maps ``h`` to ``h + attn``, the MLP sublayer ``h + attn`` to the block's output
  (What Matters in Transformers: attention sublayers are the most similar, the first to drop).
- per block whose input is [batch, tokens, features], a router for ``skip{policy=router}`` (FiRST's
  per-sequence decisions): a ridge-regression probe from a sequence's input averaged over its tokens to
  the block's mean input/output cosine on that sequence, fitted on the calibration sequences, and its
  predictions on them (the pass picks thresholds among these).
- per ``nn.Linear`` (and transformers' ``Conv1D``; keyed by its weight's state-dict key): the mean square of each input channel
  over all tokens, ``h = diag(X^T X) / tokens`` (the diagonal of the layer's Hessian for a squared
  loss on its output); from it, for each candidate format, the quantization error weighted as a
  second-order estimate of the loss it adds, ``sum_k h_k sum_n (w_nk - q(w)_nk)^2``; and the share of
  high-impact weights, those over three standard deviations from zero (Layer-Wise Quantization's
  second measure, and the High-Impact Parameter Ratio paper's).

The result is cached on disk (``~/.cache/lamina/calibration``, or ``cache_dir``), keyed by a hash of
the weights, the batches and the formats: the same model and data calibrate once. A damaged cache
file is reported and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .ir.quant_format import QuantFormat, QuantFormatError, dequantize, quantize
from .log import logger

CACHE_VERSION = 4
DEFAULT_FORMATS = (QuantFormat(8, 0), QuantFormat(4, 32), QuantFormat(4, 64), QuantFormat(4, 128), QuantFormat(4, 0),
                   QuantFormat(8, 0, "asym"), QuantFormat(4, 32, "asym"))
OUTLIER_SIGMAS = 3.0


@dataclass(frozen=True)
class LinearStats:
    """One linear layer: sizes, high-impact share, and the Hessian-weighted error of each format."""

    key: str
    out_features: int
    in_features: int
    outlier_fraction: float
    hessian_trace: float
    errors: Mapping[str, float]  # QuantFormat.label -> sum_k h_k sum_n (w - q(w))^2

    @property
    def module(self) -> str:
        return self.key.rsplit(".", 1)[0]


@dataclass(frozen=True)
class BlockStats:
    """One residual block: how much its output differs from its input."""

    path: str
    cosine: float
    update_norm: float
    attn_cosine: float | None = None  # the attention sublayer's input/output cosine (None: not found)
    mlp_cosine: float | None = None
    router: tuple[float, ...] = ()  # a probe w (then b): w . mean over tokens of the input + b ~ this sequence's cosine
    router_scores: tuple[float, ...] = ()  # the probe's predictions on the calibration sequences

    def sublayer_cosine(self, kind: str) -> float | None:
        """``attn`` or ``mlp``: that sublayer's mean input/output cosine."""
        return self.attn_cosine if kind == "attn" else self.mlp_cosine


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` measured; ``importance`` and ``estimated_loss`` combine it for the passes."""

    linears: Mapping[str, LinearStats]
    blocks: Mapping[str, BlockStats]
    batches: int
    tokens: int
    key: str = ""
    formats: tuple[str, ...] = field(default_factory=tuple)

    def linear(self, key: str) -> LinearStats | None:
        """The statistics of weight ``key``, also when the compiled module wraps the calibrated one (its
        keys then carry a prefix: ``model.h.0.c_fc.weight`` for ``h.0.c_fc.weight``)."""
        return _lookup(self.linears, key)

    def block(self, path: str) -> BlockStats | None:
        """The statistics of block ``path`` (a prefixed path as for ``linear``)."""
        return _lookup(self.blocks, path)

    def block_of(self, key: str) -> BlockStats | None:
        """The residual block a weight belongs to (the longest block path prefixing its key)."""
        stats = self.linear(key)
        key = stats.key if stats is not None else key
        best = None
        for path, block in self.blocks.items():
            if key.startswith(path + ".") and (best is None or len(path) > len(best.path)):
                best = block
        return best

    def importance(self, key: str) -> float:
        """How much a layer matters, relative to the others (mean 1): its block's ``1 - cosine`` over the
        blocks' mean, times ``(1 + outlier share / mean outlier share) / 2``. Layers outside blocks
        count as average blocks."""
        changes = [1 - b.cosine for b in self.blocks.values()]
        mean_change = sum(changes) / len(changes) if changes else 0.0
        block = self.block_of(key)
        by_block = (1 - block.cosine) / mean_change if block is not None and mean_change > 0 else 1.0
        outliers = [s.outlier_fraction for s in self.linears.values()]
        mean_outliers = sum(outliers) / len(outliers) if outliers else 0.0
        stats = self.linear(key)
        share = stats.outlier_fraction / mean_outliers if stats is not None and mean_outliers > 0 else 1.0
        return by_block * (1 + share) / 2

    def estimated_loss(self, key: str, fmt: QuantFormat) -> float:
        """The loss quantizing weight ``key`` in ``fmt`` adds, by this calibration (0 for float)."""
        stats = self.linear(key)
        if stats is None:
            raise KeyError(f"the calibration has no linear layer with weight {key!r}; calibrate the model this "
                           "graph was traced from")
        if fmt.label not in stats.errors:
            raise KeyError(f"the calibration measured no {fmt.label} errors (it has {', '.join(self.formats)}); "
                           f"pass formats=[..., QuantFormat({fmt.bits}, {fmt.group}, {fmt.scheme!r})] to "
                           "lamina.calibrate")
        return stats.errors[fmt.label] * self.importance(key)

    def to_json(self) -> str:
        return json.dumps({"version": CACHE_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        data = json.loads(text)
        if data.pop("version", None) != CACHE_VERSION:
            raise ValueError("written by another version of lamina")
        blocks = {k: BlockStats(**{**v, "router": tuple(v["router"]), "router_scores": tuple(v["router_scores"])})
                  for k, v in data["blocks"].items()}
        return cls(linears={k: LinearStats(**v) for k, v in data["linears"].items()}, blocks=blocks, batches=data["batches"],
                   tokens=data["tokens"], key=data["key"], formats=tuple(data["formats"]))


def _lookup(table: Mapping[str, Any], name: str) -> Any:
    """``table[name]``, or the one entry ``name`` ends with after a dot (a wrapper's prefix)."""
    if name in table:
        return table[name]
    found = [v for k, v in table.items() if name.endswith("." + k)]
    return found[0] if len(found) == 1 else None


def calibrate(model: nn.Module, batches: Iterable[Any], *, formats: Sequence[QuantFormat] = DEFAULT_FORMATS,
              cache_dir: str | Path | None = None, progress: bool | None = None) -> Calibration:
    """Run ``model`` on ``batches`` (each a tensor, a tuple of arguments or a dict of keyword arguments)
    once, recording per-layer statistics (see the module doc); cached by weights, batches and formats.
    ``progress`` (default: when stderr is a terminal) prints the batches and layers as they go."""
    batches = list(batches)
    progress = sys.stderr.isatty() if progress is None else progress
    if not batches:
        raise ValueError("lamina.calibrate needs at least one calibration batch")
    key = _cache_key(model, batches, formats)
    path = Path(cache_dir or Path.home() / ".cache" / "lamina" / "calibration") / f"{key}.json"
    if path.exists():
        try:
            return Calibration.from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as e:
            logger("calibration").warning("calibration cache %s is damaged (%s); calibrating again", path, e)
    result = _measure(model, batches, formats, key, progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(result.to_json())
        temporary.replace(path)  # whole or not at all: a reader never sees half a file
    except OSError as e:
        logger("calibration").warning("cannot write the calibration cache %s (%s)", path, e)
    return result


def _measure(model: nn.Module, batches: list[Any], formats: Sequence[QuantFormat], key: str,
             progress: bool) -> Calibration:
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) or _is_conv1d(m)}
    squares: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    blocks: dict[str, list[float]] = {}
    sequences: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}  # per block: mean inputs, cosines
    hooks = []

    def linear_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            squares[name] = squares.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    attention: dict[str, torch.Tensor] = {}  # per block path: its attention sublayer's output, this forward

    def attention_hook(path: str) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            a = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(a, torch.Tensor):
                attention[path] = a.detach()
        return hook

    def block_hook(path: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else kwargs.get("hidden_states")
            y = output[0] if isinstance(output, (tuple, list)) else output
            a = attention.pop(path, None)
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape:
                return
            x2, y2 = _rows(x), _rows(y)
            update = (y2 - x2).norm(dim=-1) / x2.norm(dim=-1).clamp_min(1e-30)
            sums = blocks.setdefault(path, [0.0] * 6)
            cosines = _cosines(x2, y2)
            sums[0] += float(cosines.sum())
            if x.dim() == 3:  # per sequence, for its router
                means, targets = sequences.setdefault(path, ([], []))
                means.append(x.detach().double().mean(1))
                targets.append(cosines.reshape(x.shape[0], x.shape[1]).mean(1))
            sums[1] += float(update.sum())
            sums[2] += x2.shape[0]
            if a is not None and a.shape == x.shape:
                mid = x2 + _rows(a)
                sums[3] += float(_cosines(x2, mid).sum())
                sums[4] += float(_cosines(mid, y2).sum())
                sums[5] += x2.shape[0]
        return hook

    for name, module in linears.items():
        hooks.append(module.register_forward_hook(linear_hook(name)))
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            for i, child in enumerate(module):
                path = f"{name}.{i}" if name else str(i)
                hooks.append(child.register_forward_hook(block_hook(path), with_kwargs=True))
                found = _attention_output(child)
                if found is not None:
                    hooks.append(found.register_forward_hook(attention_hook(path)))
    tokens = 0
    try:
        with torch.inference_mode():
            for i, batch in enumerate(batches):
                if isinstance(batch, Mapping):
                    model(**batch)
                else:
                    model(*(batch if isinstance(batch, (tuple, list)) else (batch,)))
                if progress:
                    print(f"\rlamina.calibrate: batch {i + 1}/{len(batches)}", end="", file=sys.stderr, flush=True)
    finally:
        for h in hooks:
            h.remove()
    stats = {}
    for n, (name, module) in enumerate(linears.items()):
        if name not in counts:
            continue  # not reached by the batches
        if progress:
            print(f"\rlamina.calibrate: layer errors {n + 1}/{len(linears)}   ", end="", file=sys.stderr, flush=True)
        tokens = max(tokens, counts[name])
        h = (squares[name] / counts[name]).to(torch.float32)
        weight = module.weight.detach().to(torch.float32)
        weight = weight.t() if _is_conv1d(module) else weight  # as [out, in], as quantize packs it
        stats[f"{name}.weight"] = _linear_stats(f"{name}.weight", weight, h, formats)
    if progress:
        print(file=sys.stderr)
    block_stats = {p: BlockStats(p, s[0] / s[2], s[1] / s[2], s[3] / s[5] if s[5] else None,
                                 s[4] / s[5] if s[5] else None, *_router(*sequences.get(p, ([], []))))
                   for p, s in blocks.items() if s[2]}
    return Calibration(stats, block_stats, len(batches), tokens, key, tuple(f.label for f in formats))


def _router(means: list[torch.Tensor], targets: list[torch.Tensor], folds: int = 4,
            ridge: float = 1e-2) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A linear probe (w, then b) from sequences' mean inputs to their cosines by ridge regression, and its
    predictions on the calibration sequences, each made by the probe fitted without its fold (``folds``-fold
    cross-validation): the pass picks thresholds among these, and a probe's predictions on the sequences it
    was fitted to are more spread than on new ones."""
    if not means:
        return (), ()
    x, y = torch.cat(means), torch.cat(targets)
    scores = torch.empty_like(y)
    fold = torch.arange(len(y)) % folds
    for k in range(folds):
        held = fold == k
        if held.all() or not held.any():
            scores[held] = _ridge(x, y, ridge)[1](x[held])
            continue
        scores[held] = _ridge(x[~held], y[~held], ridge)[1](x[held])
    probe, _ = _ridge(x, y, ridge)
    return probe, tuple(float(v) for v in scores)


def _ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[tuple[float, ...], Any]:
    """Ridge regression of ``y`` on ``x`` (the penalty ``ridge`` times the inputs' mean square, so it does not
    depend on their scale): the probe (w, then b) and a function predicting with it."""
    centre, offset = x.mean(0), y.mean()
    xc = x - centre
    gram = xc.T @ xc
    penalty = ridge * float(gram.diagonal().mean()) + 1e-12
    w = torch.linalg.solve(gram + penalty * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ (y - offset))
    b = offset - centre @ w
    return tuple(float(v) for v in (*w, b)), lambda z: z @ w + b


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1, t.shape[-1]).double()


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


ATTENTION_CHILDREN = ("self_attn", "attn", "attention")
ATTENTION_PROJECTIONS = ("c_proj", "o_proj", "out_proj")


def _attention_output(block: nn.Module) -> nn.Module | None:
    """The module of ``block`` whose output is the attention sublayer's update (see the module doc)."""
    children = dict(block.named_children())
    for name in (*ATTENTION_CHILDREN, *ATTENTION_PROJECTIONS):
        if name in children and (name in ATTENTION_CHILDREN or isinstance(children[name], nn.Linear)):
            return children[name]
    return None


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's linear layers): ``x @ weight + bias`` with weight [in, out]."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2


def _linear_stats(key: str, w: torch.Tensor, h: torch.Tensor, formats: Sequence[QuantFormat]) -> LinearStats:
    errors = {}
    for fmt in formats:
        try:
            stored = quantize(w, fmt)
        except QuantFormatError:
            continue  # this layer cannot take the format (a group that does not divide it)
        back = dequantize(stored[0], stored[1], stored[2] if fmt.scheme == "asym" else None, fmt)
        errors[fmt.label] = float((((w - back) ** 2).sum(0) * h).sum())
    outliers = float((w.abs() > OUTLIER_SIGMAS * w.std()).float().mean())
    return LinearStats(key, w.shape[0], w.shape[1], outliers, float(h.sum()), errors)


def _cache_key(model: nn.Module, batches: list[Any], formats: Sequence[QuantFormat]) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION};{[f.label for f in formats]};{OUTLIER_SIGMAS}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(_bytes(tensor))
    for batch in batches:
        for t in _tensors(batch):
            digest.update(f"{tuple(t.shape)}:{t.dtype};".encode())
            digest.update(_bytes(t))
    return digest.hexdigest()[:24]


def _bytes(t: torch.Tensor) -> bytes:
    """A tensor's contents as bytes, whatever its dtype (bfloat16 has no NumPy type)."""
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [t for k in sorted(batch) for t in _tensors(batch[k])]
    if isinstance(batch, (tuple, list)):
        return [t for b in batch for t in _tensors(b)]
    return []
