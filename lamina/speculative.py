"""Self-speculative greedy decoding: the model under a skip schedule drafts tokens, the full model verifies them.

LayerSkip's scheme (Elhoushi et al. 2024) with lamina's two compilations of one model:

1. the *draft* is the model compiled with a ``skip{...}`` pass: removed blocks compute only their KV-cache
   entries, so its cache has the full model's layout and both run on the same cache object;
2. from a verified prefix of length L, the draft proposes ``lookahead`` tokens one at a time;
3. the cache is cut back to L (the draft's entries are not the full model's) and the full model runs once
   on the last verified token and the k drafted ones (k + 1 positions), giving its own greedy choice
   after each;
4. the drafted tokens are accepted while they equal the full model's choice; the full model's choice at
   the first disagreement (or after the last draft) is appended too, and the cache is cut to the
   accepted positions.

Every emitted token is the full model's greedy choice given the tokens before it, so the output equals
plain greedy decoding with the full model (up to the float rounding of a k + 1-token forward against
one-token forwards, which can flip an exact tie).

Two kinds of model, each with its cache (a *session*: compiled modules, the cache, its length and cut):

- transformers causal LMs with their ``DynamicCache`` (``HFSession``: the forward takes
  ``past_key_values`` and returns ``logits`` and ``past_key_values``; the cache is cut with ``crop``);
- lamina's ``CharGPT`` (``CharGPTSession``: ``Prefill`` and ``StaticDecode`` modules, per-layer caches
  preallocated and written in place, cut by setting their length; the draft's removed layers write no
  entries).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import torch

from .errors import LaminaError


class SpeculativeError(LaminaError, ValueError):
    """Bad options or inputs for self-speculative decoding."""


@dataclass
class SpeculativeResult:
    """The tokens (prompt and new ones, [1, prompt + new]) and how the drafts fared."""

    tokens: torch.Tensor
    new_tokens: int
    drafted: int
    accepted: int
    full_forwards: int
    seconds: float

    @property
    def acceptance(self) -> float:
        """The share of drafted tokens the full model agreed with."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class SpeculativeDecoder:
    """Compiles the full model and its skipped draft on first use (the modules are kept for later calls).

    ``draft``: a skip pass (``"skip{speedup=1.5}"``, ``"skip{policy=similarity,drop=block:2}"``), placed in
    ``pipeline`` before its last pass (``pipeline``: lamina's, default ``canonicalize,fuse``), or a whole
    pipeline (more than one pass: ``"canonicalize,skip{speedup=2},fuse"``). ``lookahead``: tokens drafted per verification (at least 1).
    ``calibration``: for the skip policies that read it."""

    model: torch.nn.Module
    draft: str
    lookahead: int = 4
    pipeline: str = "canonicalize,fuse"
    calibration: Any = None
    modules: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.lookahead, int) or self.lookahead < 1:
            raise SpeculativeError(f"generate: lookahead={self.lookahead!r} must be a positive number of tokens to "
                                   "draft per verification (1 to about 8)")
        if "policy=router" in self.draft or "policy=temporal" in self.draft:
            raise SpeculativeError(f"generate: draft={self.draft!r} skips at run time with state kept between calls, "
                                   "which a draft whose cache is cut back every round cannot keep consistent; use "
                                   "policy=unified, exit or similarity")
        if "skip" not in self.draft:
            raise SpeculativeError(f"generate: draft={self.draft!r} has no skip pass; pass a skip schedule such as "
                                   "draft='skip{speedup=1.5}'")

    @property
    def draft_pipeline(self) -> str:
        """The draft's pipeline: ``draft`` when it is a whole one (more than one pass), else ``pipeline`` with
        the skip pass before its last pass (so the draft is fused as the full model is). Passes are told
        apart by parsing: a skip pass's options have commas of their own."""
        from .passes.manager import parse_pipeline

        if len(parse_pipeline(self.draft)) > 1:
            return self.draft
        passes = [str(step) for step in parse_pipeline(self.pipeline)]
        return ",".join([*passes[:-1], self.draft, passes[-1]] if len(passes) > 1 else [self.draft, *passes])

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int,
                 eos_token_id: int | Sequence[int] | None = None) -> SpeculativeResult:
        """Greedy continuation of ``input_ids`` [1, T] by ``max_new_tokens`` tokens, ending after an end-of-sequence
        token as transformers' ``generate`` does (``eos_token_id``; default: the model's generation config's)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise SpeculativeError(f"generate: input_ids must be [1, tokens] (one sequence: each row would accept "
                                   f"a different number of drafts), got shape {list(input_ids.shape)}")
        if max_new_tokens < 1:
            raise SpeculativeError(f"generate: max_new_tokens={max_new_tokens} must be at least 1")
        session = self._session(input_ids.shape[1] + max_new_tokens + self.lookahead + 1)
        stops = _stop_tokens(self.model, eos_token_id)
        with torch.inference_mode():
            start = time.perf_counter()
            tokens = [session.prefill(input_ids)[:, -1:].argmax(-1)]
            ended = int(tokens[0]) in stops
            drafted = accepted = forwards = 0
            while len(tokens) < max_new_tokens and not ended:
                base = session.length()
                proposal = [tokens[-1]]
                for _ in range(self.lookahead):  # the draft, one token at a time on the shared cache
                    proposal.append(session.step("draft", proposal[-1])[:, -1:].argmax(-1))
                session.truncate(base)
                window = torch.cat(proposal, 1)  # the last verified token and the drafts
                choice = session.step("verify", window)[0].argmax(-1)  # the full model's token after each position
                forwards += 1
                agree = 0
                while agree < self.lookahead and int(window[0, agree + 1]) == int(choice[agree]):
                    agree += 1
                drafted, accepted = drafted + self.lookahead, accepted + agree
                added = [window[:, i + 1:i + 2] for i in range(agree)] + [choice[agree].reshape(1, 1)]
                tokens += added
                ended = any(int(t) in stops for t in added)
                session.truncate(base + agree + 1)  # the verified positions: the last token and the accepted
            seconds = time.perf_counter() - start
        new = torch.cat(tokens, 1)[:, :max_new_tokens]
        stopped = [i for i, t in enumerate(new[0].tolist()) if t in stops]
        new = new[:, :stopped[0] + 1] if stopped else new
        return SpeculativeResult(torch.cat([input_ids, new], 1), new.shape[1], drafted, accepted, forwards, seconds)

    def _session(self, positions: int) -> "HFSession | CharGPTSession":
        """A session for one generation that reaches at most ``positions`` cache positions."""
        from .models.char_gpt import CharGPT

        if not isinstance(self.model, CharGPT):
            return HFSession(self)
        limit = self.model.wpe.num_embeddings
        if positions > limit:
            raise SpeculativeError(f"generate: the prompt, max_new_tokens and lookahead + 1 need {positions} positions; "
                                   f"this CharGPT has {limit} (its max_len)")
        return CharGPTSession(self, capacity=min(limit, -(-positions // 64) * 64))  # few distinct plans

    def in_place_draft_pipeline(self) -> str:
        """``draft_pipeline`` for caches written in place: its skip passes leave the removed layers' caches
        unwritten (``cache=skip``; the verification writes those entries) unless the draft says otherwise."""
        from .passes.manager import PassStep, parse_pipeline

        steps = [PassStep(s.info, {**s.options, "cache": "skip"}) if s.info.name == "skip" and "cache" not in s.options
                 else s for s in parse_pipeline(self.draft_pipeline)]
        return ",".join(str(step) for step in steps)

    def compiled(self, role: str, module: torch.nn.Module, args: tuple, kwargs: dict | None = None,
                 dynamic: Any = "auto", in_place: bool = False) -> Any:
        """The module compiled for ``role`` (prefill, draft or verify; the draft under the skip schedule),
        on first use for inputs like ``args`` and ``kwargs``, ``dynamic``: torch.export's dynamic shapes;
        ``in_place``: the module writes its caches in place."""
        from .api import compile

        if role not in self.modules:
            draft = self.in_place_draft_pipeline() if in_place else self.draft_pipeline
            pipeline = draft if role.startswith("draft") else self.pipeline
            self.modules[role] = compile(module, args, pipeline=pipeline, calibration=self.calibration,
                                         fallback=False, example_kwargs=kwargs, dynamic_shapes=dynamic)
        return self.modules[role]


@dataclass
class HFSession:
    """A transformers causal LM and its ``DynamicCache`` (cut with ``crop``)."""

    decoder: SpeculativeDecoder
    cache: Any = None

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.decoder.compiled("prefill", self.decoder.model, (ids,))(ids)
        self.cache = out.past_key_values
        return out.logits

    def step(self, role: str, ids: torch.Tensor) -> torch.Tensor:
        """Logits of ``ids`` after the cache (which grows by them), by the draft or the full model."""
        module = self.decoder.compiled(role, self.decoder.model, (ids,), {"past_key_values": self.cache})
        out = module(ids, past_key_values=self.cache)
        self.cache = out.past_key_values
        return out.logits

    def length(self) -> int:
        return int(self.cache.get_seq_length())

    def truncate(self, length: int) -> None:
        """Cut the cache back to its first ``length`` positions (transformers 5: ``crop(-removed)``)."""
        removed = self.length() - length
        _check_cut(self.length(), length)
        if removed:
            self.cache.crop(-removed)
        if self.length() != length:
            raise SpeculativeError(f"generate: cutting the cache to {length} positions left {self.length()}; "
                                   "this cache type cannot be rolled back")


@dataclass
class CharGPTSession:
    """lamina's CharGPT with preallocated per-layer caches written in place (``StaticDecode``): cutting the cache
    back is setting its length, since a position after the length is always written again before it is read.
    The draft's removed layers write no entries (``skip{...,cache=skip}``): the verification writes them."""

    decoder: SpeculativeDecoder
    capacity: int = 0
    caches: list[torch.Tensor] = field(default_factory=list)
    filled: int = 0
    module: torch.nn.Module | None = None  # StaticDecode of the model, made once (what the draft and verify trace)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        from torch.export import Dim

        from .models.char_gpt import Prefill, static_caches

        dynamic = ({1: Dim("tokens")},)
        prefill = self.decoder.compiled("prefill", Prefill(self.decoder.model), (ids,), dynamic=dynamic)
        logits, keys, values = prefill(ids)
        self.caches = static_caches(keys, values, self.capacity)
        self.filled = ids.shape[1]
        return logits

    def step(self, role: str, ids: torch.Tensor) -> torch.Tensor:
        from torch.export import Dim

        from .models.char_gpt import StaticDecode

        if self.module is None:
            self.module = StaticDecode(self.decoder.model)
        t = ids.shape[1]
        if self.filled + t > self.capacity:
            raise SpeculativeError(f"generate: position {self.filled + t} is past the cache's {self.capacity}")
        pos = torch.arange(self.filled, self.filled + t)
        # a verify module per lookahead: static window shapes plan its views away (a dynamic window cost 1.5x)
        module = self.decoder.compiled(role if t == 1 else f"{role} {t}", self.module, (ids, pos, *self.caches),
                                       dynamic=(None, None, ({2: Dim("capacity")},) * len(self.caches)), in_place=True)
        (logits,) = module(ids, pos, *self.caches)
        self.filled += t
        return logits

    def length(self) -> int:
        return self.filled

    def truncate(self, length: int) -> None:
        _check_cut(self.filled, length)
        self.filled = length


def _check_cut(held: int, length: int) -> None:
    if length > held:
        raise SpeculativeError(f"generate: the cache holds {held} positions, fewer than the {length} verified ones")


def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *, draft: str,
             lookahead: int = 4, pipeline: str = "canonicalize,fuse", calibration: Any = None,
             eos_token_id: int | Sequence[int] | None = None) -> SpeculativeResult:
    """Greedy decoding of a transformers causal LM (or lamina's CharGPT) with self-speculation (see the module
    docstring): the same tokens as full greedy decoding, most of them paid at the cost of the skipped ``draft``
    schedule. For repeated calls keep a ``SpeculativeDecoder`` (it compiles once)."""
    decoder = SpeculativeDecoder(model, draft, lookahead, pipeline, calibration)
    return decoder.generate(input_ids, max_new_tokens, eos_token_id)


def _stop_tokens(model: torch.nn.Module, eos_token_id: int | Sequence[int] | None) -> set[int]:
    """The end-of-sequence tokens: those given, else the model's generation config's (none for CharGPT)."""
    if eos_token_id is None:
        config = getattr(model, "generation_config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(t) for t in eos_token_id}
