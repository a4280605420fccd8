"""One compiled module called from several threads, and compile() from several threads at once."""
from __future__ import annotations

import threading

import torch

import lamina
from lamina.models import make_gpt2_stack

from tests.conftest import rel_error


def _in_threads(fn, n: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            fn(k)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_concurrent_calls_each_get_their_own_correct_result() -> None:
    """All calls used to share one arena: two threads overwrote each other's intermediates (~90% wrong)."""
    model, (ids,) = make_gpt2_stack(n_layers=2, batch=2, seq=16)
    compiled = lamina.compile(model, (ids,), poison=True,
                              dynamic_shapes=({1: torch.export.Dim("T", max=16)},))
    inputs = [torch.randint(0, 64, ids.shape) for _ in range(6)]
    with torch.no_grad():
        wants = [model(x) for x in inputs]
        short = torch.randint(0, 64, (2, 5))  # a second plan, built while the others run
        want_short = model(short)
    wrong: list[int] = []

    def work(k: int) -> None:
        with torch.no_grad():
            for i in range(25):
                j = (i + k) % len(inputs)
                if rel_error(compiled(inputs[j]), wants[j]) > 1e-5:
                    wrong.append(j)
                if i % 5 == k % 5 and rel_error(compiled(short), want_short) > 1e-5:
                    wrong.append(-1)

    assert _in_threads(work, 4) == []
    assert wrong == []


def test_compile_from_several_threads_at_once() -> None:
    """torch.export's tracing state is per process; every thread used to fail inside it."""
    results: dict[int, float] = {}

    def work(k: int) -> None:
        model, args = make_gpt2_stack(n_layers=1, batch=1, seq=8 + k)
        with torch.no_grad():
            results[k] = rel_error(lamina.compile(model, args)(*args), model(*args))

    assert _in_threads(work, 3) == []
    assert sorted(results) == [0, 1, 2] and max(results.values()) <= 1e-5
