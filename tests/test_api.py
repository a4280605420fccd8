"""lamina.compile / trace / run_pipeline as users call them: outputs, structures, and bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lamina
from lamina.models import make_mlp
from tests.conftest import rel_error


class TupleAndDict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, scale: float = 2.0) -> dict:
        y = self.fc(x)
        return {"y": y * scale, "pair": (y.sum(-1), y.argmax(-1))}


def test_outputs_keep_the_models_structure() -> None:
    model = TupleAndDict().eval()
    x = torch.randn(3, 8)
    compiled = lamina.compile(model, (x,))
    got, want = compiled(x), model(x)
    assert set(got) == {"y", "pair"} and isinstance(got["pair"], tuple)
    assert rel_error(got["y"], want["y"]) <= 1e-6
    assert rel_error(got["pair"][0], want["pair"][0]) <= 1e-6
    assert torch.equal(got["pair"][1], want["pair"][1]) and got["pair"][1].dtype == torch.int64


def test_compiled_graph_is_the_final_graph() -> None:
    model, args = make_mlp()
    compiled = lamina.compile(model, args, pipeline="canonicalize", backend="reference")
    assert isinstance(compiled.graph, lamina.Graph)
    assert compiled.graph.history[0].startswith("canonicalize")
    assert [t.name for t in compiled.timings] == ["canonicalize"]


def test_default_pipeline_and_empty_pipeline() -> None:
    assert lamina.default_pipeline("reference") == "canonicalize"
    assert lamina.default_pipeline() == lamina.default_pipeline("cpu") == "fold-norms,channels-last,canonicalize,fuse"
    model, args = make_mlp()
    compiled = lamina.compile(model, args, pipeline="")  # no optimisation: only the backend's lowering step
    assert [h.split(":")[0] for h in compiled.graph.history] == ["wrap"]
    with torch.no_grad():
        assert rel_error(compiled(*args), model(*args)) <= 1e-5


def test_wrong_input_shape_names_the_expected_shape() -> None:
    model, args = make_mlp(batch=8)
    compiled = lamina.compile(model, args)
    with pytest.raises(lamina.InputMismatchError, match=r"expects shape f32\[8,64\] but got \[4, 64\]"):
        compiled(torch.randn(4, 64))


def test_wrong_dtype_and_arity_are_clear() -> None:
    model, args = make_mlp()
    compiled = lamina.compile(model, args)
    with pytest.raises(lamina.InputMismatchError, match="expects dtype f32"):
        compiled(args[0].double())
    with pytest.raises(lamina.InputMismatchError, match="compiled for 1 positional argument"):
        compiled(args[0], args[0])
    with pytest.raises(lamina.InputMismatchError, match="is on meta; backend 'cpu' takes CPU tensors"):
        compiled(args[0].to("meta"))


def test_an_input_that_requires_grad_is_taken_without_its_history() -> None:
    model, args = make_mlp()
    compiled = lamina.compile(model, args)
    x = args[0].clone().requires_grad_()
    with torch.no_grad():
        want = model(x)
    got = compiled(x)
    assert not got.requires_grad and torch.equal(got, compiled(args[0]))
    assert rel_error(got, want) <= 1e-5


def test_changed_non_tensor_argument_is_refused() -> None:
    model = TupleAndDict().eval()
    x = torch.randn(3, 8)
    compiled = lamina.compile(model, (x, 3.0))
    compiled(x, 3.0)
    with pytest.raises(lamina.InputMismatchError, match="was 3.0 when compiled and is 4.0"):
        compiled(x, 4.0)


class ConvBN(nn.Module):
    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.conv(x)))


def test_a_training_mode_model_is_not_switched_to_eval_behind_the_users_back() -> None:
    """Batch norm in training mode uses batch statistics and updates its running ones: lamina refuses it
    clearly (or runs the model eagerly, with a warning naming the op), and leaves the mode alone."""
    model, x = ConvBN().train(), torch.randn(2, 3, 8, 8)
    with pytest.raises(lamina.UnsupportedOpsError, match="(?s)batch_norm in training mode.*model.eval()"):
        lamina.compile(model, (x,), fallback=False)
    with pytest.warns(RuntimeWarning, match="(?s)running ConvBN eagerly.*training mode") as caught:
        compiled = lamina.compile(model, (x,))
    assert compiled is model and model.training
    assert "pass fallback=True" not in str(caught[0].message)  # it already is
    model.eval()
    with torch.no_grad():
        assert rel_error(lamina.compile(model, (x,))(x), model(x)) <= 1e-5


def test_training_mode_without_random_or_stateful_ops_compiles() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0), nn.ReLU()).train()
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert rel_error(lamina.compile(model, (x,))(x), model(x)) <= 1e-6
    assert model.training


def test_calling_with_gradients_enabled_warns_once_that_no_gradients_flow() -> None:
    import warnings

    model, x = make_mlp()
    compiled = lamina.compile(model, x)
    with pytest.warns(RuntimeWarning, match="computes no gradients"):
        out = compiled(*x)
    assert not out.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled(*x)  # once only
        with torch.no_grad():
            lamina.compile(model, x)(*x)  # and never under no_grad


def test_torch_compile_updates_batch_norm_statistics_in_training_mode() -> None:
    torch._dynamo.reset()
    model, eager = ConvBN(p=0.0).train(), ConvBN(p=0.0).train()
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="lamina")
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(2, 3, 8, 8)
            assert rel_error(compiled(x), eager(x)) <= 1e-5
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    torch._dynamo.reset()


def test_unknown_backend_and_bad_pipeline() -> None:
    model, args = make_mlp()
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        lamina.compile(model, args, backend="tpu")
    with pytest.raises(lamina.LaminaError, match="unknown pass 'fusee'"):
        lamina.compile(model, args, pipeline="canonicalize,fusee")


def test_dump_dir_gets_ir_after_each_pass(tmp_path) -> None:
    model, args = make_mlp()
    lamina.compile(model, args, dump_dir=str(tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["00-input.lamina", "01-fold-norms.lamina", "02-channels-last.lamina", "03-canonicalize.lamina",
                     "04-fuse.lamina", "05-wrap.lamina"]  # wrap: the cpu backend's lowering
    assert lamina.parse((tmp_path / "03-canonicalize.lamina").read_text())


def test_dynamic_batch_runs_other_sizes_without_recompiling() -> None:
    from torch.export import Dim

    from lamina.models import make_gpt2_stack

    model, (idx,) = make_gpt2_stack(batch=2, n_layers=2)
    compiled = lamina.compile(model, (idx,), dynamic_shapes=({0: Dim("batch")},))
    assert not isinstance(compiled.graph.inputs[0].type.shape[0], int)
    for batch in (1, 3, 5):
        x = torch.randint(0, 128, (batch, idx.shape[1]))
        with torch.no_grad():
            assert rel_error(compiled(x), model(x)) <= 1e-5
    with pytest.raises(lamina.InputMismatchError, match="expects shape"):
        compiled(torch.randint(0, 128, (2, 9)))


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_low_precision_models(dtype: torch.dtype, tol: float) -> None:
    # f16/bf16 ops compute in f32 and round after each op, as torch's CPU kernels do; the
    # tolerance is a few units in the last place of the type (2^-10 for f16, 2^-7 for bf16).
    model, (x,) = make_mlp()
    model, x = model.to(dtype), x.to(dtype)
    compiled = lamina.compile(model, (x,), backend="reference")
    got = compiled(x)
    assert got.dtype == dtype
    with torch.no_grad():
        assert rel_error(got.float(), model(x).float()) <= tol


def test_example_inputs_that_alias_each_other_stay_separate_inputs() -> None:
    """torch.export traces model(x, x) as one input used twice; lamina compiles two inputs."""
    class Combine(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * 2 + b

    x, y = torch.randn(4), torch.randn(4)
    compiled = lamina.compile(Combine(), (x, x))
    assert len(compiled.graph.inputs) == 2
    torch.testing.assert_close(compiled(x, y), Combine()(x, y))
    torch.testing.assert_close(compiled(y, y), Combine()(y, y))
    rows = torch.randn(2, 4)
    compiled = lamina.compile(Combine(), (rows[0], rows[1]))  # views of one tensor
    torch.testing.assert_close(compiled(x, y), Combine()(x, y))
