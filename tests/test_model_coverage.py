"""Every model family of the zoo, through both entry points: eager's numbers within 1e-4, or a refusal that
names the ops (never a different number, never another exception). benchmarks/model_coverage.py prints the table."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from lamina.models.coverage import ENTRY_POINTS, check  # noqa: E402
from lamina.models.zoo import ZOO  # noqa: E402

# what may be refused, and by which ops; anything else must compile and match
EXPECTED_REFUSALS = {
    ("mixtral", "lamina.compile"): "transformers.grouped_mm_fallback",  # a custom op; batched_mm experts compile
}


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("model", ZOO, ids=lambda m: m.name)
def test_model_family_matches_eager_or_is_refused_clearly(model, entry: str) -> None:
    result = check(model, entry)
    expected = EXPECTED_REFUSALS.get((model.name, entry))
    if expected is not None:
        assert (result.status, result.detail) == ("refused", expected), result
    else:
        assert result.status == "ok", result
