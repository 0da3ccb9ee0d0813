"""Contract of the offline store (commit log + history), on SQLite and a real PostgreSQL.

The as-of join is checked against the reference implementation in ``core/pit.py`` on
random timelines with ties, late rows and unknown entities, so every engine must agree
with it; statistics must come out equal on both engines for the same rows.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pg_server import PostgresServer

from mlbackend_features.core.codec import encode_values
from mlbackend_features.core.model import Record, Scalar
from mlbackend_features.core.pit import Candidate, HistoryRow, as_of_join
from mlbackend_features.stores.offline import NumericSummary, OfflineStore
from mlbackend_features.stores.offline_postgres import _AS_OF, PostgresOfflineStore
from mlbackend_features.stores.offline_sqlite import SqliteOfflineStore
from mlbackend_runtime.errors import InvalidInput
from mlbackend_runtime.sql import sqlalchemy_url

BACKENDS = ["sqlite", "postgresql"]


def open_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> OfflineStore:
    if backend == "sqlite":
        return SqliteOfflineStore(tmp_path / "offline.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return PostgresOfflineStore(server.create_database())


@pytest.fixture(params=BACKENDS)
async def offline_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OfflineStore]:
    store = open_store(request.param, request, tmp_path)
    yield store
    await store.close()


@pytest.fixture
async def both_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[list[OfflineStore]]:
    stores = [open_store(backend, request, tmp_path) for backend in BACKENDS]
    yield stores
    for store in stores:
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
    assert [b.sequence for b in await offline_store.committed_after(0, 1)] == [1]


async def test_payloads_come_back_byte_for_byte(offline_store: OfflineStore) -> None:
    payload = encode_values({"s": 'ä "q" \\ \x00 \U0001f600', "d": float("nan"), "i": 2**62})
    await offline_store.append("b1", "v", [Record('["k\\u00e4"]', 5, payload)])
    (batch,) = await offline_store.committed_after(0, 10)
    assert batch.records == [Record('["k\\u00e4"]', 5, payload)]
    assert await offline_store.as_of("v", [('["k\\u00e4"]', 5)]) == [(5, payload)]


async def test_concurrent_appends_get_gapless_sequences_in_commit_order(
    offline_store: OfflineStore,
) -> None:
    commits = await asyncio.gather(
        *(offline_store.append(f"b{i}", "v", [rec(f"e{i}", i, i)]) for i in range(20))
    )
    assert sorted(c.sequence for c in commits) == list(range(1, 21))
    log = await offline_store.committed_after(0, 100)
    assert [b.sequence for b in log] == list(range(1, 21))
    assert {b.batch_id: b.sequence for b in log} == {
        f"b{i}": c.sequence for i, c in enumerate(commits)
    }


@pytest.mark.parametrize("seed", [7, 11, 23])
async def test_as_of_matches_the_reference_join(offline_store: OfflineStore, seed: int) -> None:
    rng = random.Random(seed)
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
    # More rows than one SQLite batch (500): full batches and a shorter last one.
    queries = [(f"e{rng.randint(0, 11)}", rng.randint(-5, 55)) for _ in range(1_234)]
    expected = as_of_join(history, queries)
    found = await offline_store.as_of("v", queries)
    got = [None if hit is None else Candidate(hit[0], json.loads(hit[1])) for hit in found]
    assert got == expected
    assert any(e is None for e in expected) and any(e is not None for e in expected)
    assert await offline_store.as_of("v", []) == []
    # The form Arrow's JSON reader takes: the same rows, as event times and JSON lines.
    joined = await offline_store.as_of_lines("v", queries)
    assert joined.rows() == found
    assert joined.event_us == [None if hit is None else hit[0] for hit in found]
    lines = joined.lines.decode().split("\n")
    assert lines == ["{}" if hit is None else hit[1] for hit in found]
    assert (await offline_store.as_of_lines("v", [])).rows() == []


async def test_as_of_lines_with_a_line_break_in_a_payload(offline_store: OfflineStore) -> None:
    """Hand-written JSON may hold a line break between tokens: the rows stay right."""
    await offline_store.append("b1", "v", [Record("a", 1, '{"x":\n1}'), Record("b", 1, '{"x":2}')])
    queries = [("a", 5), ("b", 5), ("c", 5)]
    joined = await offline_store.as_of_lines("v", queries)
    assert joined.rows() == await offline_store.as_of("v", queries)
    assert joined.rows() == [(1, '{"x":\n1}'), (1, '{"x":2}'), None]


async def test_latest_in_range_pages_by_entity(offline_store: OfflineStore) -> None:
    await offline_store.append(
        "b1", "v", [rec("a", 1, 1), rec("a", 5, 5), rec("b", 2, 2), rec("c", 9, 9)]
    )
    await offline_store.append("b2", "v", [rec("a", 5, "later")])
    page = await offline_store.latest_in_range("v", 0, 9, "", 2)
    assert page == [rec("a", 5, "later"), rec("b", 2, 2)]
    assert await offline_store.latest_in_range("v", 0, 9, "b", 2) == []
    assert await offline_store.count_entities("v", 0, 10) == 3


async def test_entities_page_in_byte_order(offline_store: OfflineStore) -> None:
    # Upper before lower case and "é" after "z": byte order, whatever the DB collation.
    names = ["b", "B", "a", "é", "z", "a b"]
    await offline_store.append("b1", "v", [rec(n, 1, 0) for n in names])
    seen: list[str] = []
    after = ""
    while page := await offline_store.latest_in_range("v", 0, 9, after, 2):
        seen += [r.entity for r in page]
        after = page[-1].entity
    assert seen == sorted(names, key=lambda n: n.encode())


async def test_summary_and_retention(offline_store: OfflineStore) -> None:
    rows = [rec(f"e{i}", i, float(i)) for i in range(10)]
    rows += [rec("n", 20, None), Record("nan", 21, '{"x":"nan"}')]
    await offline_store.append("b1", "v", rows)
    summary = await offline_store.feature_summary("v", "x", True, 0, 100, [0.0, 0.5, 1.0], 3)
    assert (summary.total, summary.null_count, summary.nan_count) == (12, 1, 1)
    assert (summary.min, summary.max, summary.mean) == (0.0, 9.0, 4.5)
    assert summary.std == pytest.approx(math.sqrt(8.25))
    assert [v for _, v in summary.quantiles] == [0.0, 5.0, 9.0]
    assert summary.histogram_counts == [3, 3, 4] and len(summary.histogram_edges) == 4
    assert summary.distinct_count == 10
    assert await offline_store.purge_before("v", 5, 1_000) == 5
    assert await offline_store.count_entities("v", 0, 100) == 7


async def test_purge_is_bounded(offline_store: OfflineStore) -> None:
    await offline_store.append("b1", "v", [rec(f"e{i}", i, i) for i in range(10)])
    await offline_store.append("b2", "w", [rec("e", 0, 0)])
    assert await offline_store.purge_before("v", 100, 4) == 4
    assert await offline_store.purge_before("v", 100, 4) == 4
    assert await offline_store.purge_before("v", 100, 4) == 2
    assert await offline_store.purge_before("v", 100, 4) == 0
    assert await offline_store.count_entities("w", 0, 100) == 1


async def test_categorical_summary(offline_store: OfflineStore) -> None:
    values = ["b", "a", "b", None, "B", "a", "b", "\x00z"]
    await offline_store.append("b1", "v", [rec(f"e{i}", i, v) for i, v in enumerate(values)])
    summary = await offline_store.feature_summary("v", "x", False, 0, 100, [0.5], 4)
    assert (summary.total, summary.null_count, summary.nan_count) == (8, 1, 0)
    assert summary.distinct_count == 4
    assert summary.top_categories[:2] == [("b", 3), ("a", 2)]
    assert ("B", 1) in summary.top_categories and len(summary.top_categories) == 4
    assert summary.mean is None and summary.quantiles == [] and summary.histogram_counts == []


async def test_markers(offline_store: OfflineStore) -> None:
    assert await offline_store.get_marker("m") is None
    await offline_store.set_marker("m", 5)
    await offline_store.set_marker("m", 6)
    assert await offline_store.get_marker("m") == 6


def random_rows(rng: random.Random, n: int) -> list[Record]:
    out = []
    for _ in range(n):
        values: dict[str, Scalar] = {
            "d": rng.choice([None, float("nan"), float("inf")])
            if rng.random() < 0.1
            else round(rng.gauss(50, 20), rng.randint(0, 6)),
            "i": None if rng.random() < 0.05 else rng.randint(-1000, 1000),
            "s": rng.choice([None, "DE", "FR", "US", "de", "Ü", "a b"]),
            "b": rng.choice([None, True, False]),
            "t": rng.choice([None, 1_700_000_000_000_000, 1_700_000_001_000_000]),
        }
        if rng.random() < 0.05:
            del values["d"]  # written before the feature existed
        out.append(
            Record(f'["u{rng.randint(0, 40)}"]', rng.randint(0, 1_000), encode_values(values))
        )
    return out


def assert_same_summary(a: NumericSummary, b: NumericSummary) -> None:
    assert a._replace(mean=None, std=None) == b._replace(mean=None, std=None)
    for x, y in ((a.mean, b.mean), (a.std, b.std)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x == pytest.approx(y, rel=1e-12, abs=1e-12)


async def test_statistics_equal_on_sqlite_and_postgresql(both_stores: list[OfflineStore]) -> None:
    rng = random.Random(3)
    for batch in range(5):
        rows = random_rows(rng, 400)
        for store in both_stores:
            await store.append(f"b{batch}", "v", rows)
    quantiles = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0]
    for feature, numeric in [("d", True), ("i", True), ("s", False), ("b", False), ("t", False)]:
        for window in [(0, 1_001), (100, 400), (2_000, 3_000)]:
            sqlite, postgres = [
                await store.feature_summary("v", feature, numeric, *window, quantiles, 7)
                for store in both_stores
            ]
            assert_same_summary(sqlite, postgres)
            if window == (0, 1_001):
                assert sqlite.total == 2_000 and sqlite.null_count > 0
                assert sqlite.nan_count > 0 if feature == "d" else sqlite.nan_count == 0
                assert (sqlite.histogram_counts != []) == numeric
                assert (sqlite.top_categories != []) == (not numeric)


async def test_postgres_as_of_seeks_the_index(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    store = PostgresOfflineStore(url)
    try:
        rows = [rec(f"e{i % 2_000}", i, i) for i in range(20_000)]
        await store.append("b1", "v", rows)
        engine = sa.create_engine(sqlalchemy_url(url))
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE feature_history"))
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    sa.text("EXPLAIN " + _AS_OF.text),
                    {"view": "v", "entities": ["e1", "e2"] * 500, "times": [5_000] * 1_000},
                )
            )
        engine.dispose()
        assert "ix_feature_history_asof" in plan, plan
        assert "Seq Scan on feature_history" not in plan, plan
    finally:
        await store.close()


async def test_postgres_batch_is_all_or_nothing(postgres: PostgresServer) -> None:
    store = PostgresOfflineStore(postgres.create_database())
    try:
        # PostgreSQL text cannot hold a raw NUL: the second row fails the insert, refused
        # as the caller's error (stored rows are JSON, where a NUL is escaped).
        with pytest.raises(InvalidInput):
            await store.append("bad", "v", [rec("a", 1, 1), Record("b", 2, "\x00")])
        assert await store.committed_after(0, 10) == []
        assert await store.count_entities("v", 0, 10) == 0
        assert (await store.append("bad", "v", [rec("a", 1, 1)])).sequence == 1
    finally:
        await store.close()
