"""How ``mlbackend predict`` types the text of ``--entity`` and ``--feature`` values."""

from __future__ import annotations

import time

import pytest

from mlbackend.common.v1 import common_pb2 as c
from mlbackend_cli.predict_cmd import UsageError, parse_pairs, parse_value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-12-07T10:00:00Z", 1_796_637_600),
        ("2026-12-07T11:00:00+01:00", 1_796_637_600),
        ("2026-12-07T10:00:00.250Z", 1_796_637_600),
    ],
)
def test_a_date_and_time_with_its_offset_is_a_timestamp(text: str, seconds: int) -> None:
    value = parse_value(text, None, "double")
    assert value.WhichOneof("kind") == "timestamp_value"
    assert value.timestamp_value.seconds == seconds


@pytest.mark.parametrize("text", ["2026-12-07T10:00:00", "2026-12-07", "2026-13-07T10:00:00Z"])
def test_text_that_is_not_a_full_rfc3339_time_stays_a_string(text: str) -> None:
    assert parse_value(text, None, "double") == c.Value(string_value=text)


def test_explicit_types_win_over_the_text() -> None:
    assert parse_value("2026-12-07T10:00:00Z", "str", "double") == c.Value(
        string_value="2026-12-07T10:00:00Z"
    )
    assert parse_value("now", None, "double") == c.Value(string_value="now")
    before = time.time()
    now = parse_value("now", "timestamp", "double").timestamp_value
    assert before - 1 <= now.seconds + now.nanos / 1e9 <= time.time() + 1


def test_a_bad_timestamp_says_what_is_expected() -> None:
    with pytest.raises(UsageError, match=r"RFC 3339 .* 2026-12-07T10:00:00Z, or now"):
        parse_value("yesterday", "timestamp", "double")


def test_numbers_booleans_and_strings() -> None:
    got = parse_pairs(
        ["amount=120.5", "n=3", "flag=true", "mcc:str=5411", "k:int=7", "name=x"],
        "--feature",
        numbers_as="double",
    )
    assert got == {
        "amount": c.Value(double_value=120.5),
        "n": c.Value(double_value=3),
        "flag": c.Value(bool_value=True),
        "mcc": c.Value(string_value="5411"),
        "k": c.Value(int64_value=7),
        "name": c.Value(string_value="x"),
    }
    assert parse_pairs(["user_id=42"], "--entity", numbers_as="int") == {
        "user_id": c.Value(int64_value=42)
    }
    with pytest.raises(UsageError, match="TYPE must be one of str, int, double, bool, timestamp"):
        parse_pairs(["x:date=1"], "--feature", numbers_as="double")
