"""The GraphModule a dynamo backend receives translates too, with module paths and parameter names."""
from __future__ import annotations

import numpy as np
import torch

from lamina.frontends.fx import ConstRole, InputRole, ParamRole, import_graph_module
from lamina.ir import interpret
from lamina.models import make_gpt2_stack
from tests.conftest import rel_error


def test_dynamo_graph_module_matches_eager() -> None:
    model, args = make_gpt2_stack(n_layers=2)
    captured = {}

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        captured["gm"], captured["inputs"] = gm, list(example_inputs)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend)(*args)
    imported = import_graph_module(captured["gm"], captured["inputs"])
    graph = imported.graph
    assert {p.key for p in graph.params} >= {"h.0.attn.c_attn.weight", "wte.weight", "ln_f.bias"}
    assert any(op.loc.module == "h.1.mlp.c_fc" for op in graph.ops)
    inputs, weights = [], {}
    for role, value in zip(imported.roles, captured["inputs"]):
        assert not isinstance(role, ConstRole)
        if isinstance(role, InputRole):
            inputs.append(value.detach().numpy())
        elif isinstance(role, ParamRole):
            weights[role.key] = value.detach().numpy()
    (out,) = interpret(graph, inputs, weights)
    with torch.no_grad():
        assert rel_error(out, model(*args)) <= 1e-5
    assert isinstance(out, np.ndarray)
