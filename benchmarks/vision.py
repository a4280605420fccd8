"""transformers' own vision models at their default sizes: eager vs inductor vs lamina, batch 1 and 8.

    python benchmarks/vision.py [--only NAME ...] [--batch 1 8] [--repeats 5]

Random weights, eval mode, 224 x 224 images. Per model and batch: the median forward time of each
contender over interleaved rounds, lamina's speedups, and both compilers' cold compile times
(inductor: its first call with an empty cache directory and no FX graph cache; lamina: compile()
plus first call with an empty kernel cache). A model lamina refuses is listed with the reason.
Models: ResNet-50, ConvNeXt-T, ViT-B/16, MobileNetV2 (1.0), EfficientNet-B0, Swin-T, RegNet
(transformers' default configs, except EfficientNet's coefficients, which default to B7).

Subnormal floats are flushed to zero for every contender (``torch.set_flush_denormal``): with random
weights EfficientNet-B0's activations decay into subnormals (its logits are exactly 0), where every
float operation is about 100 times slower (a 30 MFLOP batched GEMM took 25 ms), so the table would time
the arithmetic of underflow instead of the model.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lamina  # noqa: E402
from common import cold_caches, interleaved_medians, machine, print_table  # noqa: E402

MODELS = {  # name -> (config class, model class, config overrides)
    "resnet50": ("ResNetConfig", "ResNetForImageClassification", {}),
    "convnext_tiny": ("ConvNextConfig", "ConvNextForImageClassification", {}),
    "vit_b16": ("ViTConfig", "ViTForImageClassification", {}),
    "mobilenet_v2": ("MobileNetV2Config", "MobileNetV2ForImageClassification", {}),
    "efficientnet_b0": ("EfficientNetConfig", "EfficientNetForImageClassification",
                        {"width_coefficient": 1.0, "depth_coefficient": 1.0, "image_size": 224,
                         "hidden_dim": 1280}),  # B0: the default hidden_dim (2560) is B7's
    "swin_tiny": ("SwinConfig", "SwinForImageClassification", {}),
    "regnet": ("RegNetConfig", "RegNetForImageClassification", {}),
}


class Logits(torch.nn.Module):
    """The model's logits as a plain tensor (the output dataclass aside)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).logits


def build(name: str) -> torch.nn.Module:
    import transformers

    config_cls, model_cls, overrides = MODELS[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**overrides)
    model = Logits(getattr(transformers, model_cls)(config).eval()).eval()
    with torch.no_grad():
        if not model(torch.randn(1, 3, 224, 224)).any():
            _calibrate_batch_norms(model)
    return model


def _calibrate_batch_norms(model: torch.nn.Module) -> None:
    """Batch norm scales of one and running statistics measured on a random batch, so every layer's
    activations stay near 1 as in a trained network.

    transformers initializes EfficientNet's batch norm scales like its convolutions, normal with std
    0.02, and its running statistics as the identity: every block then shrinks the activations about
    100x, they reach zero (denormals on the way) by the 15th, and the logits are exactly zero, so the
    error column would check nothing and the timings would include denormal arithmetic no real model
    does."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        torch.nn.init.ones_(norm.weight)
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 224, 224))
    model.eval()


def cold_inductor(model: torch.nn.Module, x: torch.Tensor) -> tuple[object, float]:
    torch._dynamo.reset()
    with cold_caches(), torch.no_grad():
        compiled = torch.compile(model)
        t = time.perf_counter()
        compiled(x)
    return compiled, time.perf_counter() - t


def cold_lamina(model: torch.nn.Module, x: torch.Tensor) -> tuple[object, float]:
    with cold_caches(), torch.no_grad():
        t = time.perf_counter()
        compiled = lamina.compile(model, (x,), fallback=False)
        compiled(x)
    return compiled, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=tuple(MODELS))
    parser.add_argument("--batch", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    ns = parser.parse_args()
    torch.set_flush_denormal(True)
    print(f"machine: {machine()}")
    rows, lamina_vs_eager, lamina_vs_inductor = [], [], []
    for name in ns.only or MODELS:
        model = build(name)
        for batch in ns.batch:
            x = torch.randn(batch, 3, 224, 224)
            inductor, inductor_s = cold_inductor(model, x)
            try:
                compiled, lamina_s = cold_lamina(model, x)
            except lamina.LaminaError as e:
                rows.append([name, batch, "-", "-", "-", "-", "-", f"{inductor_s:.1f}", "-",
                             "refused: " + str(e).splitlines()[0][:80]])
                print(rows[-1], flush=True)
                continue
            with torch.no_grad():
                want = model(x)
                err = float((compiled(x) - want).abs().max() / want.abs().max().clamp_min(1e-30))  # 0 where both are 0
                t = interleaved_medians({"eager": lambda: model(x), "inductor": lambda: inductor(x),
                                         "lamina": lambda: compiled(x)}, ns.repeats)
            lamina_vs_eager.append(t["eager"] / t["lamina"])
            lamina_vs_inductor.append(t["inductor"] / t["lamina"])
            rows.append([name, batch, f"{t['eager'] * 1e3:.1f}", f"{t['inductor'] * 1e3:.1f}",
                         f"{t['lamina'] * 1e3:.1f}", f"{lamina_vs_eager[-1]:.2f}x", f"{lamina_vs_inductor[-1]:.2f}x",
                         f"{inductor_s:.1f}", f"{lamina_s:.1f}", f"{err:.1e}"])
            print(rows[-1], flush=True)
    print()
    print_table(["model", "batch", "eager ms", "inductor ms", "lamina ms", "vs eager", "vs inductor",
                 "inductor cold compile s", "lamina cold compile s", "lamina err"], rows)
    if lamina_vs_eager:
        def geomean(xs: list[float]) -> float:
            return math.exp(sum(math.log(v) for v in xs) / len(xs))

        print(f"\ngeometric mean over the rows lamina ran: {geomean(lamina_vs_eager):.2f}x eager, "
              f"{geomean(lamina_vs_inductor):.2f}x inductor")


if __name__ == "__main__":
    main()
