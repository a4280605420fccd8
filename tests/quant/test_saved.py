"""compiled.save / lamina.load: one safetensors file, bit-exact, no model needed, damage reported."""
from __future__ import annotations

import gc

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lamina
from lamina.saved import SaveError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()


@pytest.mark.parametrize("pipeline", ["canonicalize,fuse", "canonicalize,quantize{bits=8,keep=none},fuse",
                                      "canonicalize,quantize{bits=4,group=32,scheme=asym,keep=none},fuse"])
def test_round_trip_is_bit_exact_without_the_model(tmp_path, pipeline: str) -> None:
    model, x = _mlp(), torch.randn(3, 64)
    compiled = lamina.compile(model, (x,), pipeline=pipeline)
    path = tmp_path / "mlp.safetensors"
    compiled.save(path)
    with torch.no_grad():
        want = compiled(x).clone()
    del model, compiled
    gc.collect()
    loaded = lamina.load(path, frozen=False)  # a frozen plan's C kernels sum in another order
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
    keys = {p.key for p in loaded.graph.params}
    if "quantize" in pipeline:  # the packed weights are saved, the float ones are not
        assert "0.weight" not in keys and {"0.weight.qweight", "0.weight.scales"} <= keys
        assert ("0.weight.zeros" in keys) == ("asym" in pipeline)
        assert [r.fmt.bits for r in loaded.quantization] == [8 if "bits=8" in pipeline else 4] * 2
    else:
        assert "0.weight" in keys


def test_a_budget_mixed_module_round_trips(tmp_path) -> None:
    model = _mlp()
    batches = [torch.randn(8, 64) for _ in range(2)]
    stats = lamina.calibrate(model, batches, cache_dir=tmp_path, progress=False)
    compiled = lamina.compile(model, (batches[0],), pipeline="canonicalize,quantize{budget=6.0,keep=none},fuse",
                              calibration=stats)
    compiled.save(tmp_path / "m.safetensors")
    loaded = lamina.load(tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(batches[1]), compiled(batches[1]))


def test_damaged_files_are_clear_errors(tmp_path) -> None:
    compiled = lamina.compile(_mlp(), (torch.randn(3, 64),), pipeline="canonicalize,quantize{bits=4,keep=none},fuse")
    good = tmp_path / "good.safetensors"
    compiled.save(good)
    data = good.read_bytes()
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    with pytest.raises(SaveError, match="do not match its checksum"):
        lamina.load(flipped)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SaveError, match="is damaged or not a safetensors file"):
        lamina.load(truncated)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(SaveError, match="not a saved lamina module"):
        lamina.load(other)
    with pytest.raises(SaveError, match="does not exist"):
        lamina.load(tmp_path / "missing.safetensors")


def test_transformers_decoding_with_a_dynamic_cache_round_trips(tmp_path) -> None:
    from lamina.models.hf import make_hf_llama

    model, (ids,), _ = make_hf_llama()
    with torch.no_grad():
        cache = model(ids).past_key_values
    token = ids[:, -1:]
    decode = lamina.compile(model, (token,), example_kwargs={"past_key_values": cache}, dynamic_shapes="auto",
                            pipeline="canonicalize,quantize{bits=8},fuse", fallback=False)
    decode.save(tmp_path / "decode.safetensors")
    loaded = lamina.load(tmp_path / "decode.safetensors")
    with torch.no_grad():
        assert torch.equal(loaded(token, past_key_values=cache).logits, decode(token, past_key_values=cache).logits)


class Pair:
    """A result type registered with torch's pytree but without a serialized name."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b


torch.utils._pytree.register_pytree_node(Pair, lambda p: ([p.a, p.b], None), lambda xs, _: Pair(*xs))


class Pairs(nn.Module):
    def forward(self, x: torch.Tensor) -> Pair:
        return Pair(x * 2, x + 1)


def test_a_result_type_torch_cannot_serialize_is_a_clear_error(tmp_path) -> None:
    compiled = lamina.compile(Pairs(), (torch.randn(3),), fallback=False)
    with pytest.raises(SaveError, match="cannot save Pairs: .* serialized name"):
        compiled.save(tmp_path / "pairs.safetensors")
