"""The point-in-time acceptance timeline, with hand-built expectations.

user u1 (TTL 1 h):   10:00 v=1   10:30 v=2 (written twice: the later write wins)
                     10:15 v=9 written last but older (out of order)
user u2:             first value at 12:00
user u3:             never written
"""

from __future__ import annotations

from datetime import UTC, datetime

from mlbackend_features.core.model import MICROS, Cell, Status, datetime_to_us
from mlbackend_features.core.pit import Candidate, HistoryRow, as_of_join, cells, is_expired

HOUR = 3_600 * MICROS
TTL = HOUR


def at(hh: int, mm: int = 0, ss: int = 0) -> int:
    return datetime_to_us(datetime(2026, 1, 1, hh, mm, ss, tzinfo=UTC))


HISTORY = [
    HistoryRow("u1", at(10), {"v": 1}),
    HistoryRow("u1", at(10, 30), {"v": 2}),
    HistoryRow("u2", at(12), {"v": 5}),
    HistoryRow("u1", at(10, 30), {"v": 3}),  # same time, committed later: wins
    HistoryRow("u1", at(10, 15), {"v": 9}),  # late arrival of an older value
]


def read(entity: str, as_of: int) -> Cell:
    (candidate,) = as_of_join(HISTORY, [(entity, as_of)])
    return cells(candidate, ["v"], as_of, TTL)[0]


def test_before_the_first_value_is_not_found() -> None:
    assert read("u1", at(9, 59, 59)) == Cell(None, Status.NOT_FOUND, None)


def test_value_at_exactly_its_event_time_counts() -> None:
    assert read("u1", at(10)) == Cell(1, Status.PRESENT, at(10))


def test_out_of_order_write_is_visible_only_where_it_is_the_latest() -> None:
    assert read("u1", at(10, 20)) == Cell(9, Status.PRESENT, at(10, 15))
    assert read("u1", at(10, 40)) == Cell(3, Status.PRESENT, at(10, 30))


def test_equal_timestamps_go_to_the_later_commit() -> None:
    assert read("u1", at(10, 30)) == Cell(3, Status.PRESENT, at(10, 30))


def test_ttl_boundary_is_inclusive() -> None:
    assert read("u1", at(11, 30)) == Cell(3, Status.PRESENT, at(10, 30))
    assert read("u1", at(11, 30) + 1) == Cell(None, Status.EXPIRED, at(10, 30))


def test_entity_seen_only_after_the_row_time_is_not_found() -> None:
    assert read("u2", at(11, 59)) == Cell(None, Status.NOT_FOUND, None)
    assert read("u2", at(12)) == Cell(5, Status.PRESENT, at(12))


def test_missing_entity_is_not_found() -> None:
    assert read("u3", at(12)) == Cell(None, Status.NOT_FOUND, None)


def test_every_query_gets_an_answer_in_order() -> None:
    queries = [("u3", at(12)), ("u1", at(10)), ("u2", at(9)), ("u1", at(10))]
    got = as_of_join(HISTORY, queries)
    assert got == [None, Candidate(at(10), {"v": 1}), None, Candidate(at(10), {"v": 1})]


def test_zero_ttl_never_expires_and_stored_null_has_its_own_status() -> None:
    assert not is_expired(0, 10**15, 0)
    candidate = Candidate(at(10), {"v": None, "w": 2})
    assert cells(candidate, ["v", "w", "absent"], at(10), 0) == [
        Cell(None, Status.NULL_VALUE, at(10)),
        Cell(2, Status.PRESENT, at(10)),
        Cell(None, Status.NULL_VALUE, at(10)),
    ]
