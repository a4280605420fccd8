"""Model coverage table: each zoo family through lamina.compile and torch.compile(backend="lamina").

    python benchmarks/model_coverage.py [--only NAME ...]

For each tiny random model of ``lamina/models/zoo.py`` (encoders, decoders, encoder-decoders,
CNNs, vision transformers, MoE, state-space): ``ok (error)`` when lamina's outputs on fresh
inputs match eager within 1e-4 (max|got - want| / max|want|, poisoned buffers), with the ops
torch.compile left to PyTorch if any; ``refused: ops`` when lamina declines with an error
naming them. Any other outcome (a different number, another exception) is a bug.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine, print_table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None)
    ns = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    from lamina.models.coverage import ENTRY_POINTS, check
    from lamina.models.zoo import ZOO

    print(f"machine: {machine()}")
    rows, bad = [], 0
    for model in ZOO:
        if ns.only and model.name not in ns.only:
            continue
        results = [check(model, entry) for entry in ENTRY_POINTS]
        bad += sum(r.status not in ("ok", "refused") for r in results)
        rows.append([model.name, model.family, *(r.cell() for r in results),
                     " / ".join(f"{r.seconds:.1f}" for r in results)])
        print(" | ".join(rows[-1]), flush=True)
    print()
    print_table(["model", "family", *ENTRY_POINTS, "compile+run s"], rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
