"""What torch.export needs to trace a ``transformers`` model as users call it, from transformers itself.

A causal LM returns its KV cache (``DynamicCache``) and takes it back on the next step; torch.export
can only trace objects it can flatten. transformers' own exporter registers its cache classes as
pytree nodes and patches the few spots that do not trace (sliding-window cache updates, CPU
attention's batch guard); lamina uses exactly that, so a compiled module returns the same
``ModelOutput`` with ``past_key_values`` as eager and a compiled decode step takes it back.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any


def is_transformers_model(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.")


def as_keywords(model: Any, args: tuple, kwargs: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The names of ``model.forward``'s leading parameters that ``args`` fill, and every argument by name.

    transformers models take ``**kwargs``; torch.export would bundle keywords under that name, where
    a KV cache's dynamic shapes cannot be given. transformers exports by keyword only, and so does lamina."""
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(params):
        raise TypeError(f"{type(model).__name__}.forward takes {len(params)} positional arguments, got {len(args)}")
    names = tuple(p.name for p in params[:len(args)])
    return names, {**dict(zip(names, args)), **kwargs}


@contextlib.contextmanager
def export_context(model: Any, inputs: Mapping[str, Any]) -> Iterator[None]:
    """transformers' export support around a trace of ``model(**inputs)`` (nothing for other models)."""
    if not is_transformers_model(model):
        yield
        return
    try:
        from transformers.exporters import exporter_dynamo as hf
    except ImportError:  # an older transformers without the exporters package: trace as is
        yield
        return
    hf.register_cache_pytrees_for_model(model)  # idempotent: a class is registered once per process
    with hf.apply_patches("dynamo"), hf.reset_model_state(model), hf.patch_forward_signature(model, inputs):
        yield
