"""Contract of the offline store (commit log + history), on SQLite.

The as-of join is checked against the reference implementation in ``core/pit.py`` on a
timeline with ties, late rows and unknown entities, so every engine must agree with it.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlbackend_features.core.model import Record
from mlbackend_features.core.pit import Candidate, HistoryRow, as_of_join
from mlbackend_features.stores.offline import OfflineStore
from mlbackend_features.stores.offline_sqlite import SqliteOfflineStore

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
async def offline_store(tmp_path: Path) -> AsyncIterator[OfflineStore]:
    store = SqliteOfflineStore(tmp_path / "offline.db")
    yield store
    await store.close()


def rec(entity: str, ts: int, x: object) -> Record:
    return Record(entity, ts, json.dumps({"x": x}))


async def test_append_numbers_commits_and_drops_resent_batches(
    offline_store: OfflineStore,
) -> None:
    first = await offline_store.append("b1", "v", [rec("a", 1, 1), rec("b", 2, 2)])
    second = await offline_store.append("b2", "w", [rec("a", 3, 3)])
    again = await offline_store.append("b1", "v", [rec("zzz", 9, 9)])
    assert (first.sequence, first.row_count, first.duplicate) == (1, 2, False)
    assert second.sequence == 2
    assert (again.sequence, again.row_count, again.duplicate) == (1, 2, True)
    log = await offline_store.committed_after(0, 10)
    assert [(b.sequence, b.batch_id, b.feature_view) for b in log] == [
        (1, "b1", "v"),
        (2, "b2", "w"),
    ]
    assert log[0].records == [rec("a", 1, 1), rec("b", 2, 2)]
    assert [b.sequence for b in await offline_store.committed_after(1, 10)] == [2]
    assert await offline_store.committed_after(2, 10) == []


async def test_as_of_matches_the_reference_join(offline_store: OfflineStore) -> None:
    rng = random.Random(7)
    history: list[HistoryRow] = []
    for batch in range(40):
        records: list[Record] = []
        for _ in range(rng.randint(1, 8)):
            entity, ts = f"e{rng.randint(0, 9)}", rng.randint(0, 50)  # many equal times
            records.append(rec(entity, ts, len(history) + len(records)))
        await offline_store.append(f"b{batch}", "v", records)
        history += [HistoryRow(r.entity, r.event_us, json.loads(r.payload)) for r in records]
    # Another view's rows never leak in.
    await offline_store.append("other", "w", [rec("e1", 0, "other")])
    queries = [(f"e{rng.randint(0, 11)}", rng.randint(-5, 55)) for _ in range(500)]
    expected = as_of_join(history, queries)
    found = await offline_store.as_of("v", queries)
    got = [None if hit is None else Candidate(hit[0], json.loads(hit[1])) for hit in found]
    assert got == expected
    assert any(e is None for e in expected) and any(e is not None for e in expected)


async def test_latest_in_range_pages_by_entity(offline_store: OfflineStore) -> None:
    await offline_store.append(
        "b1", "v", [rec("a", 1, 1), rec("a", 5, 5), rec("b", 2, 2), rec("c", 9, 9)]
    )
    await offline_store.append("b2", "v", [rec("a", 5, "later")])
    page = await offline_store.latest_in_range("v", 0, 9, "", 2)
    assert page == [rec("a", 5, "later"), rec("b", 2, 2)]
    assert await offline_store.latest_in_range("v", 0, 9, "b", 2) == []
    assert await offline_store.count_entities("v", 0, 10) == 3


async def test_summary_and_retention(offline_store: OfflineStore) -> None:
    rows = [rec(f"e{i}", i, float(i)) for i in range(10)]
    rows += [rec("n", 20, None), Record("nan", 21, '{"x":"nan"}')]
    await offline_store.append("b1", "v", rows)
    summary = await offline_store.feature_summary("v", "x", True, 0, 100, [0.0, 0.5, 1.0], 3)
    assert (summary.total, summary.null_count, summary.nan_count) == (12, 1, 1)
    assert (summary.min, summary.max, summary.mean) == (0.0, 9.0, 4.5)
    assert [v for _, v in summary.quantiles] == [0.0, 5.0, 9.0]
    assert summary.histogram_counts == [3, 3, 4] and len(summary.histogram_edges) == 4
    assert await offline_store.purge_before("v", 5, 1_000) == 5
    assert await offline_store.count_entities("v", 0, 100) == 7


async def test_markers(offline_store: OfflineStore) -> None:
    assert await offline_store.get_marker("m") is None
    await offline_store.set_marker("m", 5)
    await offline_store.set_marker("m", 6)
    assert await offline_store.get_marker("m") == 6
