"""Timestamps and values of received messages that cannot convert are named as the
caller's fault (``mlbackend_runtime.received``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend_runtime.errors import InvalidInput
from mlbackend_runtime.received import invalid_timestamps, scalar_at, time_at

LAST = Timestamp(seconds=253_402_300_799, nanos=999_999_999)  # 9999-12-31T23:59:59.999999999Z
FIRST = Timestamp(seconds=-62_135_596_800)  # 0001-01-01T00:00:00Z


def test_valid_timestamps_convert_and_invalid_ones_are_named() -> None:
    assert time_at(FIRST, "t") == datetime(1, 1, 1, tzinfo=UTC)
    assert scalar_at(c.Value(timestamp_value=LAST), "v") == datetime(
        9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC
    )
    for bad in (
        Timestamp(seconds=LAST.seconds + 1),
        Timestamp(seconds=FIRST.seconds - 1),
        Timestamp(nanos=-1),
        Timestamp(nanos=1_000_000_000),
    ):
        with pytest.raises(InvalidInput) as caught:
            time_at(bad, "filter.start_time")
        assert [v.field for v in caught.value.violations] == ["filter.start_time"]
        with pytest.raises(InvalidInput) as caught:
            scalar_at(c.Value(timestamp_value=bad), "input.request_features.at")
        assert [v.field for v in caught.value.violations] == ["input.request_features.at"]


def test_every_invalid_timestamp_of_a_message_is_found_by_its_path() -> None:
    request = f.GetHistoricalFeaturesRequest(
        entity_rows=[
            f.EntityRow(event_time=LAST),
            f.EntityRow(
                entity_key=c.EntityKey(
                    join_keys={
                        "user_id": c.Value(string_value="u1"),
                        "since": c.Value(timestamp_value=Timestamp(seconds=2**40)),
                    }
                ),
                event_time=Timestamp(nanos=-5),
                request_inputs=c.FeatureMap(values={"at": c.Value(timestamp_value=FIRST)}),
            ),
        ]
    )
    assert [v.field for v in invalid_timestamps(request)] == [
        "entity_rows[1].entity_key.join_keys.since.timestamp_value",
        "entity_rows[1].event_time",
    ]
    assert [v.field for v in invalid_timestamps(request.entity_rows[1], "row")] == [
        "row.entity_key.join_keys.since.timestamp_value",
        "row.event_time",
    ]
    assert invalid_timestamps(f.GetHistoricalFeaturesRequest(entity_rows=[f.EntityRow()])) == []
