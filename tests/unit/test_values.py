"""``mlbackend.common.v1.Value`` ↔ scalars, built new or written in place."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mlbackend.common.v1 import common_pb2
from mlbackend_clients.values import Scalar, set_value, to_scalar, to_value


@pytest.mark.parametrize(
    ("scalar", "kind"),
    [
        (None, "null_value"),
        (True, "bool_value"),
        (False, "bool_value"),
        (0, "int64_value"),
        (-7, "int64_value"),
        (0.0, "double_value"),
        (2.5, "double_value"),
        ("", "string_value"),
        ("u00001", "string_value"),
        (datetime(2026, 11, 26, 12, 0, 1, 250_000, tzinfo=UTC), "timestamp_value"),
    ],
)
def test_in_place_equals_new_and_round_trips(scalar: Scalar, kind: str) -> None:
    built = to_value(scalar)
    assert built.WhichOneof("kind") == kind
    entry = common_pb2.FeatureMap()
    set_value(entry.values["x"], scalar)
    vector = common_pb2.FeatureVector()
    set_value(vector.values.add(), scalar)
    assert entry.values["x"] == built and vector.values[0] == built
    assert to_scalar(built) == scalar and type(to_scalar(built)) is type(scalar)


def test_writing_over_a_value_switches_its_kind() -> None:
    value = to_value("text")
    set_value(value, 3)
    assert value.WhichOneof("kind") == "int64_value" and to_scalar(value) == 3
