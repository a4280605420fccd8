"""Interpreter vs eager PyTorch on the reference models and tiny HuggingFace models (float32, rel <= 1e-5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lamina
from lamina.frontends.fx import import_module
from lamina.ir import interpret
from lamina.models import make_cnn, make_gpt2_stack, make_llama_block, make_mlp
from lamina.models.hf import make_hf_gpt2, make_hf_llama
from tests.conftest import rel_error

F32_TOL = 1e-5  # float32: the interpreter's NumPy kernels and torch's differ only in summation order

LOCAL_MODELS = {
    "mlp": make_mlp,
    "gpt2_stack": make_gpt2_stack,
    "llama_block": make_llama_block,
    "cnn": make_cnn,
}


def _fresh_like(args: tuple) -> tuple:
    """New random inputs of the same shapes and dtypes (integer inputs keep their range)."""
    out = []
    for a in args:
        if a.dtype.is_floating_point:
            out.append(torch.randn_like(a))
        else:
            out.append(torch.randint(0, int(a.max()) + 1, a.shape, dtype=a.dtype))
    return tuple(out)


@pytest.mark.parametrize("name", sorted(LOCAL_MODELS))
def test_local_model_matches_eager(name: str) -> None:
    model, args = LOCAL_MODELS[name]()
    compiled = lamina.compile(model, args)
    for trial in range(2):
        inputs = args if trial == 0 else _fresh_like(args)
        with torch.no_grad():
            expected = model(*inputs)
        assert rel_error(compiled(*inputs), expected) <= F32_TOL


def test_gpt2_stack_four_layers_has_four_blocks() -> None:
    model, args = make_gpt2_stack(n_layers=4)
    graph = lamina.trace(model, args)
    modules = {op.loc.module for op in graph.ops}
    assert {f"h.{i}.attn.c_proj" for i in range(4)} <= modules
    assert sum(op.name == "attention" for op in graph.ops) == 4


@pytest.mark.parametrize("factory", [make_hf_gpt2, make_hf_llama], ids=["gpt2", "llama"])
def test_transformers_model_matches_eager(factory) -> None:
    model, args, kwargs = factory()
    compiled = lamina.compile(model, args, example_kwargs=kwargs)
    for trial in range(2):
        inputs = args if trial == 0 else (torch.randint(0, 128, args[0].shape),)
        with torch.no_grad():
            expected = model(*inputs, **kwargs)
        got = compiled(*inputs, **kwargs)
        assert type(got) is type(expected)
        assert rel_error(got.logits, expected.logits) <= F32_TOL


def test_transformers_gpt2_with_attention_mask() -> None:
    model, (ids,), kwargs = make_hf_gpt2()
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    compiled = lamina.compile(model, (ids,), example_kwargs={**kwargs, "attention_mask": mask})
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, **kwargs).logits
    got = compiled(ids, attention_mask=mask, **kwargs).logits
    assert rel_error(got[1], expected[1]) <= F32_TOL
    assert rel_error(got[0, 5:], expected[0, 5:]) <= F32_TOL


def test_parameters_are_named_by_state_dict_keys() -> None:
    model, args, kwargs = make_hf_gpt2()
    imported = import_module(model, args, kwargs)
    keys = {p.key for p in imported.graph.params}
    assert "transformer.h.0.attn.c_attn.weight" in keys
    assert keys <= set(model.state_dict()) | {k for k, _ in model.named_buffers()}
    # the interpreter runs on the state dict directly
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items() if k in keys}
    (out,) = interpret(imported.graph, [args[0].numpy()], weights)
    with torch.no_grad():
        assert rel_error(out, model(*args, **kwargs).logits) <= F32_TOL


def test_ops_record_module_path_and_target() -> None:
    model, args, kwargs = make_hf_gpt2()
    graph = lamina.trace(model, args, kwargs)
    linear = [op for op in graph.ops if op.loc.module == "transformer.h.1.mlp.c_fc"]
    assert linear and all(op.loc.target.startswith("aten.") for op in linear)


def test_float64_model_runs_in_float64() -> None:
    model, args = make_mlp()
    model = model.double()
    args = (args[0].double(),)
    compiled = lamina.compile(model, args)
    assert compiled.graph.inputs[0].type.dtype.value == "f64"
    with torch.no_grad():
        assert rel_error(compiled(*args), model(*args)) <= 1e-12
    assert compiled(*args).dtype == torch.float64


def test_interpreter_outputs_are_fresh_arrays() -> None:
    model, args = make_mlp()
    compiled = lamina.compile(model, args)
    a, b = compiled(*args), compiled(*args)
    assert not np.shares_memory(a.numpy(), b.numpy())
