"""Differential fuzzing of lamina against eager PyTorch, for as long as you like.

    python benchmarks/fuzz.py --minutes 30 [--seed N] [--max-steps 6] [--show-refusals]

Draws random torch programs (``lamina/fuzz.py``: elementwise chains with broadcasting,
reductions, layout changes, indexing with negative indices, attention with masks, odd and
0-size dims), compiles each with lamina (cpu backend with poisoned buffers, and the reference
interpreter) and compares with eager. Prints every failing program with its IR and the error,
then a table of outcomes. Exit status 1 if any program gave a wrong number or crashed.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--show-refusals", action="store_true", help="print programs lamina refused, too")
    args = parser.parse_args()

    from hypothesis import HealthCheck, Phase, given, seed, settings

    from common import machine

    from lamina.fuzz import check, programs, report

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # kernel-cache and transformers chatter
    deadline = time.monotonic() + args.minutes * 60
    counts: dict[str, int] = {}
    failures: list[str] = []

    @seed(args.seed)
    @settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(programs(args.max_steps))
    def run(program) -> None:
        if time.monotonic() > deadline:
            raise _TimeUp
        outcome = check(program)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        if outcome.status in ("wrong", "crash") or (args.show_refusals and outcome.status == "refused"):
            text = report(program, outcome)
            failures.append(text)
            print(text, flush=True)

    start = time.monotonic()
    try:
        run()
    except _TimeUp:
        pass
    elapsed = time.monotonic() - start
    total = sum(counts.values())
    print(f"\nfuzz: {total} programs in {elapsed / 60:.1f} min on {machine()}, seed {args.seed}")
    print("| outcome | programs |\n|---|---|")
    for status in ("ok", "refused", "wrong", "crash"):
        print(f"| {status} | {counts.get(status, 0)} |")
    return 1 if counts.get("wrong", 0) + counts.get("crash", 0) else 0


class _TimeUp(Exception):
    """The time budget is spent (raised through hypothesis to stop the run)."""


if __name__ == "__main__":
    sys.exit(main())
