"""The SQLite prediction log keeps every value as it came: types, NaN and infinities."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlbackend_monitoring.core.model import PredictionFilter, PredictionOutput, PredictionRecord
from mlbackend_monitoring.stores.sqlite import SqlitePredictionLog

WHEN = datetime(2026, 11, 27, 8, 30, tzinfo=UTC)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize(
    "output",
    [
        PredictionOutput(label=1, probabilities=(0.25, 0.75), confidence=0.75),
        # Non-finite numbers take the other encoder: they must not come back as null.
        PredictionOutput(
            label="fraud",
            value=math.inf,
            probabilities=(math.nan, 1.0),
            confidence=-math.inf,
            decision_threshold=0.5,
        ),
    ],
)
async def test_values_read_back_as_they_were_written(
    tmp_path: Path, output: PredictionOutput
) -> None:
    features = {
        "amount": 12.5,
        "tiny": 1e-300,
        "missing_value": math.nan,
        "up": math.inf,
        "down": -math.inf,
        "count": 3,
        "big": -(2**63),
        "flag": True,
        "city": "Zürich",
        "seen": WHEN - timedelta(days=1),
        "absent": None,
    }
    record = PredictionRecord(
        prediction_id="p-1",
        model="fraud",
        version=2,
        prediction_time=WHEN,
        entity_key={"user_id": 42, "region": "eu"},
        features=features,
        output=output,
        latency=timedelta(microseconds=1234),
    )
    log = SqlitePredictionLog(tmp_path / "log.sqlite")
    try:
        result = await log.ingest([record])
        assert (result.accepted, result.duplicates) == (1, 0)
        (back,) = (await log.page(PredictionFilter(model="fraud"), 10, None)).records
    finally:
        await log.close()
    assert back.entity_key == {"user_id": 42, "region": "eu"}
    assert back.features.keys() == features.keys()
    for name, value in features.items():
        assert _same(value, back.features[name]), name
    assert _same(output.label, back.output.label)
    for field in ("value", "confidence", "decision_threshold"):
        assert _same(getattr(output, field), getattr(back.output, field)), field
    assert len(back.output.probabilities) == len(output.probabilities)
    assert all(
        _same(a, b) for a, b in zip(output.probabilities, back.output.probabilities, strict=True)
    )
    assert (back.prediction_time, back.latency) == (WHEN, timedelta(microseconds=1234))
