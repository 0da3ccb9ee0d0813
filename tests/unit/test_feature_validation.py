"""Row validation of writes: dtypes, constraints, NaN policy, limits, all violations listed."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from mlbackend_features.core.model import (
    Constraints,
    DType,
    Feature,
    FeatureView,
    JoinKey,
    NanPolicy,
    WriteBatch,
    WriteRow,
    datetime_to_us,
)
from mlbackend_features.core.validation import (
    MAX_REPORTED_VIOLATIONS,
    check_value,
    entity_strings,
    rejection,
    validate_batch,
)
from mlbackend_runtime.errors import InvalidInput

T = datetime_to_us(datetime(2026, 1, 1, tzinfo=UTC))
KEYS = [JoinKey(name="user_id", dtype=DType.STRING)]
VIEW = FeatureView(
    name="v",
    entities=("user",),
    features=(
        Feature(name="amount", dtype=DType.DOUBLE, constraints=Constraints(min=0, max=100)),
        Feature(name="count", dtype=DType.INT64, constraints=Constraints(not_null=True)),
        Feature(
            name="country",
            dtype=DType.STRING,
            constraints=Constraints(allowed_values=("DE", "FR"), max_length=2),
        ),
        Feature(
            name="ratio", dtype=DType.DOUBLE, constraints=Constraints(nan_policy=NanPolicy.AS_NULL)
        ),
        Feature(
            name="raw", dtype=DType.DOUBLE, constraints=Constraints(nan_policy=NanPolicy.ALLOW)
        ),
        Feature(name="seen", dtype=DType.TIMESTAMP),
        Feature(name="flag", dtype=DType.BOOL),
    ),
)


def feature(name: str) -> Feature:
    found = VIEW.feature(name)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("name", "value", "stored", "problem"),
    [
        ("amount", 5, 5.0, None),  # ints widen to doubles
        ("amount", 5.5, 5.5, None),
        ("amount", -1.0, None, "-1.0 is below min 0.0"),
        ("amount", 101, None, "101.0 is above max 100.0"),
        ("amount", "5", None, "expected DOUBLE, got STRING"),
        ("amount", True, None, "expected DOUBLE, got BOOL"),
        ("amount", math.nan, None, "nan is not allowed (nan_policy REJECT)"),
        ("amount", math.inf, None, "inf is not allowed (nan_policy REJECT)"),
        ("amount", None, None, None),
        ("count", None, None, "must not be null"),
        ("count", 1.5, None, "expected INT64, got DOUBLE"),
        ("country", "DE", "DE", None),
        ("country", "XX", None, "'XX' is not one of the allowed values ('DE', 'FR')"),
        ("country", "DEU", None, "longer than max_length 2"),
        ("ratio", math.nan, None, None),
        ("raw", -math.inf, -math.inf, None),
        ("seen", datetime(9999, 1, 1, tzinfo=UTC), None,
         "timestamp must be between 1900-01-01 and 2200-01-01 UTC"),
        ("flag", 1, None, "expected BOOL, got INT64"),
    ],
)  # fmt: skip
def test_check_value(name: str, value: object, stored: object, problem: str | None) -> None:
    assert check_value(feature(name), value) == (stored, problem)  # type: ignore[arg-type]


def test_a_long_list_of_allowed_values_is_named_in_part() -> None:
    codes = tuple(range(100, 125))
    status = Feature(
        name="status", dtype=DType.INT64, constraints=Constraints(allowed_values=codes)
    )
    assert check_value(status, 7) == (
        None,
        "7 is not one of the allowed values "
        "(100, 101, 102, 103, 104, 105, 106, 107, 108, 109, … 15 more)",
    )


def test_a_string_over_the_limit_is_refused() -> None:
    loose = Feature(name="s", dtype=DType.STRING)
    assert check_value(loose, "x" * 65_536) == ("x" * 65_536, None)
    assert check_value(loose, "x" * 1_000_000) == (
        None,
        "string of 1000000 bytes exceeds the limit of 65536",
    )


def batch(*rows: WriteRow, features: list[str] | None = None) -> WriteBatch:
    return WriteBatch("b", "v", features or ["amount", "count"], list(rows))


def test_valid_batch_becomes_records_with_omitted_features_null() -> None:
    records, violations = validate_batch(VIEW, KEYS, batch(WriteRow({"user_id": "u1"}, T, [1, 2])))
    assert violations == []
    assert records[0].entity == '["u1"]' and records[0].event_us == T
    assert json.loads(records[0].payload) == {
        "amount": 1.0, "count": 2, "country": None, "ratio": None, "raw": None, "seen": None,
        "flag": None,
    }  # fmt: skip


def test_every_violation_of_every_row_is_listed_and_nothing_is_kept() -> None:
    records, violations = validate_batch(
        VIEW,
        KEYS,
        batch(
            WriteRow({"user_id": "ok"}, T, [1.0, 1]),
            WriteRow({"user_id": "u2"}, T, [-1.0, None]),
            WriteRow({"user_id": 3, "extra": "x"}, None, [1.0, 1]),
            WriteRow({}, T, [1.0]),
        ),
    )
    assert records == []
    assert [(v.row_index, v.feature, v.field) for v in violations] == [
        (1, "amount", "batch.rows[1].values.amount"),
        (1, "count", "batch.rows[1].values.count"),
        (2, "user_id", "batch.rows[2].entity_key.user_id"),
        (2, "extra", "batch.rows[2].entity_key.extra"),
        (2, "event_time", "batch.rows[2].event_time"),
        (3, "user_id", "batch.rows[3].entity_key.user_id"),
        (3, "", "batch.rows[3].values"),
    ]


def test_batch_level_problems() -> None:
    _, violations = validate_batch(VIEW, KEYS, batch(features=["amount", "nope", "amount"]))
    assert [(v.field, v.description) for v in violations] == [
        ("batch.features[1]", "unknown feature of view 'v'"),
        ("batch.features[2]", "listed twice"),
        ("batch.features", "not-null feature missing from the batch"),
        ("batch.rows", "a batch needs at least one row"),
    ]


def test_rejection_caps_the_details_but_counts_everything() -> None:
    _, violations = validate_batch(
        VIEW, KEYS, batch(*[WriteRow({"user_id": f"u{i}"}, T, [-1.0, None]) for i in range(100)])
    )
    error = rejection(violations)
    assert isinstance(error, InvalidInput)
    assert len(error.violations) == MAX_REPORTED_VIOLATIONS
    assert len(error.row_violations) == 200
    assert "200 violation(s) in 100 row(s)" in error.message


def test_read_keys_are_checked_with_field_paths() -> None:
    assert entity_strings(KEYS, [{"user_id": "a"}], "entity_keys") == ['["a"]']
    with pytest.raises(InvalidInput) as raised:
        entity_strings(KEYS, [{"user_id": "a"}, {"user_id": 1}, {}], "entity_keys")
    assert [v.field for v in raised.value.violations] == [
        "entity_keys[1].join_keys.user_id",
        "entity_keys[2].join_keys.user_id",
    ]
