"""A deep, narrow character-level GPT with a KV cache: the model of the SNLP experiments and benchmark.

``CharGPT`` is a pre-norm decoder (learned positions, causal attention, GELU MLP, tied head).
It runs three ways, each a module lamina can compile:
- ``model(idx)``: logits for every position (training, perplexity);
- ``Prefill(model)(idx)``: logits and every layer's keys and values, ``[layers, batch, heads, T, head]``;
- ``Decode(model)(idx, past_k, past_v)``: one new token per row attending to the cache; logits and
  the new token's keys and values (the caller appends them: shapes stay static per cache length);
- ``StaticDecode(model)(idx, pos, *caches)``: new tokens per row written in place into
  preallocated per-layer caches at positions ``pos``; every step has the same shapes, so one
  compiled plan serves a whole generation and no cache is copied (``greedy_static``); with several
  tokens (a speculative verification) each attends to the cache and the new ones before it.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d_model)
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)
        self.ln_2 = nn.LayerNorm(d_model)
        self.c_fc = nn.Linear(d_model, 4 * d_model)
        self.c_out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor | None = None,
                past_v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block's output and this call's keys and values ``[batch, heads, T, head]``."""
        q, k, v = self.qkv(x)
        if past_k is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif x.shape[1] == 1:  # one new token per row: it sees the whole cache and itself
            y = F.scaled_dot_product_attention(q, torch.cat([past_k, k], 2), torch.cat([past_v, v], 2))
        else:  # several new tokens (a speculative verification): each sees the cache and the new ones up to it
            t, past = x.shape[1], past_k.shape[2]
            positions = torch.arange(past + t, device=x.device)
            visible = positions[None, :] <= positions[past:, None]
            y = F.scaled_dot_product_attention(q, torch.cat([past_k, k], 2), torch.cat([past_v, v], 2),
                                               attn_mask=visible)
        return self.rest(x, y), k, v

    def forward_static(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, pos: torch.Tensor,
                       visible: torch.Tensor) -> torch.Tensor:
        """``x``'s tokens (at positions ``pos``): their keys and values written into the caches at ``pos`` (in
        place), then attention over the cache positions ``visible`` ([tokens, cache positions]) marks."""
        q, k, v = self.qkv(x)
        cache_k.index_copy_(2, pos, k)
        cache_v.index_copy_(2, pos, v)
        return self.rest(x, F.scaled_dot_product_attention(q, cache_k, cache_v, attn_mask=visible))

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values ``[batch, heads, T, head]``."""
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=-1)
        return tuple(z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))

    def rest(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The block after attention: output projection, residual, MLP."""
        b, t, d = x.shape
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.c_out(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class CharGPT(nn.Module):
    def __init__(self, vocab: int = 96, d_model: int = 256, n_heads: int = 4, n_layers: int = 24,
                 max_len: int = 512) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d_model)
        self.wpe = nn.Embedding(max_len, d_model)
        self.h = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            if name.endswith(("c_proj.weight", "c_out.weight")):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layers))

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        return self.wte(idx) + self.wpe(pos)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_f(x) @ self.wte.weight.T

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.h:
            x = block(x)[0]
        return self.head(x)


class Prefill(nn.Module):
    """``(logits, keys, values)`` of a prompt; keys and values stacked over the layers; with
    ``with_hidden`` also the last block's output (the stack's final hidden state)."""

    def __init__(self, model: CharGPT, with_hidden: bool = False) -> None:
        super().__init__()
        self.model, self.with_hidden = model, with_hidden

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, ks, vs = self.model.embed(idx), [], []
        for block in self.model.h:
            x, k, v = block(x)
            ks.append(k)
            vs.append(v)
        out = (self.model.head(x), torch.stack(ks), torch.stack(vs))
        return out + (x,) if self.with_hidden else out


class Decode(nn.Module):
    """New tokens per row after a cache of ``past_k.shape[3]`` positions: ``(logits, new keys, new values)``
    (and the final hidden state with ``with_hidden``); one token when decoding, several (each attending to
    the cache and the new ones before it) when verifying drafted tokens."""

    def __init__(self, model: CharGPT, with_hidden: bool = False) -> None:
        super().__init__()
        self.model, self.with_hidden = model, with_hidden

    def forward(self, idx: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, ks, vs = self.model.embed(idx, past_k.shape[3]), [], []
        for layer, block in enumerate(self.model.h):
            x, k, v = block(x, past_k[layer], past_v[layer])
            ks.append(k)
            vs.append(v)
        out = (self.model.head(x), torch.stack(ks), torch.stack(vs))
        return out + (x,) if self.with_hidden else out


class StaticDecode(nn.Module):
    """The tokens ``idx`` [batch, t] at positions ``pos`` ([t], consecutive) after the cache: their keys and
    values are written into ``caches`` (``k_0, v_0, k_1, v_1, ...``, each ``[batch, heads, max_len, head]``) in
    place, and each attends to the cache positions up to its own; returns the logits (and the final hidden
    state with ``with_hidden``). Positions after the last of ``pos`` are never read, so a cache cut back to a
    shorter length needs no clearing."""

    def __init__(self, model: CharGPT, with_hidden: bool = False) -> None:
        super().__init__()
        self.model, self.with_hidden = model, with_hidden

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.model.wte(idx) + self.model.wpe(pos)
        visible = torch.arange(caches[0].shape[2], device=idx.device)[None, :] <= pos[:, None]  # [t, max_len]
        for layer, block in enumerate(self.model.h):
            x = block.forward_static(x, caches[2 * layer], caches[2 * layer + 1], pos, visible)
        return (self.model.head(x), x) if self.with_hidden else (self.model.head(x),)


def static_caches(keys: torch.Tensor, values: torch.Tensor, max_len: int) -> list[torch.Tensor]:
    """Per-layer caches of ``max_len`` positions holding a prefill's stacked keys and values."""
    caches = []
    for k, v in zip(keys, values):
        for t in (k, v):
            cache = t.new_zeros(t.shape[0], t.shape[1], max_len, t.shape[3])
            cache[:, :, : t.shape[2]] = t
            caches.append(cache)
    return caches


def greedy_static(prefill, decode, prompt: torch.Tensor, steps: int, max_len: int) -> torch.Tensor:
    """``greedy`` with a ``StaticDecode`` (eager or compiled): the caches are allocated once and written
    in place; every step has the same shapes."""
    logits, keys, values = prefill(prompt)
    caches = static_caches(keys, values, max_len)
    out = [logits[:, -1].argmax(-1, keepdim=True)]
    for i in range(steps - 1):
        (logits,) = decode(out[-1], torch.tensor([prompt.shape[1] + i]), *caches)
        out.append(logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(out, 1)


def greedy(prefill, decode, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy continuation of ``prompt`` by ``steps`` tokens with any prefill/decode callables
    (eager modules or lamina-compiled ones); the cache grows by concatenation."""
    logits, keys, values = prefill(prompt)
    out = [logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(steps - 1):
        logits, k, v = decode(out[-1], keys, values)
        keys, values = torch.cat([keys, k], 3), torch.cat([values, v], 3)
        out.append(logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(out, 1)


def make_char_gpt(batch: int = 1, seq: int = 32, d_model: int = 64, n_heads: int = 4, n_layers: int = 6,
                  vocab: int = 96, seed: int = 0) -> tuple[nn.Module, tuple]:
    torch.manual_seed(seed)
    model = CharGPT(vocab, d_model, n_heads, n_layers, max(seq, 64)).eval()
    return model, (torch.randint(0, vocab, (batch, seq)),)
