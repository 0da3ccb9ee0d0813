"""One contract for every online store engine: SQLite (embedded) and a real Redis.

Through the store interface, and through the core's online read so both engines are
seen to answer identically (statuses, TTL, request order).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from contract.redis_server import redis_server
from mlbackend_features.core.model import (
    MICROS,
    Actor,
    DefinitionSet,
    DType,
    Entity,
    Feature,
    FeatureView,
    JoinKey,
    OnlineQuery,
    Record,
    Status,
    WriteBatch,
    WriteRow,
)
from mlbackend_features.core.service import FeatureStore
from mlbackend_features.stores.definitions import SqliteDefinitionStore
from mlbackend_features.stores.offline_sqlite import SqliteOfflineStore
from mlbackend_features.stores.online import OnlineStore
from mlbackend_features.stores.online_redis import RedisOnlineStore
from mlbackend_features.stores.online_sqlite import SqliteOnlineStore

# As the server runs them (reads kept in process: dropped on own writes, and for Redis
# on its invalidations), and "-uncached" with --online-read-cache 0.
BACKENDS = ["sqlite", "sqlite-uncached", "redis", "redis-uncached"]
T = 1_767_225_600 * MICROS  # 2026-01-01


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=BACKENDS)
async def online_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OnlineStore]:
    store: OnlineStore
    cache = 0 if request.param.endswith("-uncached") else 100_000
    if request.param.startswith("sqlite"):
        store = SqliteOnlineStore(tmp_path / "online.db", read_cache=cache)
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisOnlineStore(url, prefix=f"test:{uuid.uuid4().hex}", read_cache=cache)
    yield store
    await store.close()


async def test_newest_event_time_wins_and_late_rows_are_ignored(
    online_store: OnlineStore,
) -> None:
    await online_store.apply("v", [Record('["a"]', T + 10, '{"x":1}')], 1)
    await online_store.apply("v", [Record('["a"]', T + 5, '{"x":0}')], 2)  # out of order
    assert await online_store.read("v", ['["a"]']) == {'["a"]': (T + 10, '{"x":1}')}
    # Equal event time: the later write wins (same rule as point-in-time retrieval).
    await online_store.apply("v", [Record('["a"]', T + 10, '{"x":2}')], 3)
    assert await online_store.read("v", ['["a"]']) == {'["a"]': (T + 10, '{"x":2}')}
    # Within one batch, rows apply in order.
    await online_store.apply(
        "v", [Record('["b"]', T + 3, '{"x":3}'), Record('["b"]', T + 1, '{"x":1}')], 4
    )
    assert await online_store.read("v", ['["b"]']) == {'["b"]': (T + 3, '{"x":3}')}


async def test_views_are_separate_and_missing_keys_are_absent(online_store: OnlineStore) -> None:
    await online_store.apply("v", [Record('["a"]', T, '{"x":1}')], 1)
    await online_store.apply("w", [Record('["a"]', T, '{"y":2}')], 2)
    assert await online_store.read("v", ['["zz"]', '["a"]']) == {'["a"]': (T, '{"x":1}')}
    assert await online_store.read("w", ['["a"]']) == {'["a"]': (T, '{"y":2}')}
    assert await online_store.read("v", []) == {}


async def test_read_now_answers_what_read_does_in_request_order(
    online_store: OnlineStore, request: pytest.FixtureRequest
) -> None:
    await online_store.apply(
        "v", [Record('["a"]', T, '{"x":1}'), Record('["b"]', T + 1, '{"x":2}')], 1
    )
    keys = ['["b"]', '["none"]', '["a"]', '["b"]']
    found = await online_store.read("v", keys)  # kept in memory where the store keeps reads
    now = online_store.read_now("v", keys)
    if request.node.callspec.params["online_store"] == "redis-uncached":
        assert now is None  # Redis is a round trip on the event loop
    else:
        assert now == [found.get(k) for k in keys]
        assert now == [(T + 1, '{"x":2}'), None, (T, '{"x":1}'), (T + 1, '{"x":2}')]
    # Its own write is seen at once: a changed value is not answered from memory.
    await online_store.apply("v", [Record('["a"]', T + 5, '{"x":3}')], 2)
    again = online_store.read_now("v", ['["a"]'])
    assert again is None or again == [(T + 5, '{"x":3}')]


async def test_watermark_only_moves_forward(online_store: OnlineStore) -> None:
    assert await online_store.applied_sequence() == 0
    await online_store.apply("v", [], 5)
    await online_store.apply("v", [Record('["a"]', T, "{}")], 3)
    assert await online_store.applied_sequence() == 5


async def test_large_batches_and_reads(online_store: OnlineStore) -> None:
    records = [Record(f'["k{i}"]', T + i, f'{{"x":{i}}}') for i in range(2_345)]
    await online_store.apply("v", records, 7)
    keys = [r.entity for r in reversed(records)] + ['["none"]']
    found = await online_store.read("v", keys)
    assert len(found) == 2_345 and found['["k17"]'] == (T + 17, '{"x":17}')
    assert await online_store.applied_sequence() == 7


async def test_delete_expired_removes_only_old_values(online_store: OnlineStore) -> None:
    await online_store.apply("v", [Record('["old"]', T, "{}"), Record('["new"]', T + 100, "{}")], 1)
    await online_store.apply("w", [Record('["old"]', T, "{}")], 2)
    assert set(await online_store.read("v", ['["old"]', '["new"]'])) == {'["old"]', '["new"]'}
    assert await online_store.delete_expired("v", T + 50, 1_000) == 1
    assert set(await online_store.read("v", ['["old"]', '["new"]'])) == {'["new"]'}
    assert set(await online_store.read("w", ['["old"]'])) == {'["old"]'}


async def test_a_cleanup_leaves_the_values_it_kept_in_the_read_cache(
    online_store: OnlineStore, request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["online_store"]
    await online_store.apply("v", [Record('["old"]', T, "{}"), Record('["new"]', T + 100, "{}")], 1)
    assert set(await online_store.read("v", ['["old"]', '["new"]'])) == {'["old"]', '["new"]'}
    assert await online_store.delete_expired("v", T + 50, 1_000) == 1
    # The deleted value is gone at once; the kept one is still answered from memory
    # (a SQLite store's cache holds it; a Redis store's read_now answers only from it).
    if backend == "sqlite":
        cache = online_store._cache  # type: ignore[attr-defined]
        assert cache.get([("v", '["new"]')]) == [(T + 100, "{}")]
        assert cache.get([("v", '["old"]')]) is None
    if backend != "redis-uncached":  # that one reads only through the event loop
        assert online_store.read_now("v", ['["new"]']) == [(T + 100, "{}")]
    assert await online_store.read("v", ['["old"]', '["new"]']) == {'["new"]': (T + 100, "{}")}


async def test_what_was_read_is_never_served_after_it_changed(online_store: OnlineStore) -> None:
    # Absent, then written: the absence read first is not served afterwards.
    assert await online_store.read("v", ['["late"]']) == {}
    await online_store.apply("v", [Record('["late"]', T, '{"x":1}')], 1)
    assert await online_store.read("v", ['["late"]']) == {'["late"]': (T, '{"x":1}')}
    # A large read running while a write lands may see either value, but never leaves
    # the old one behind for the reads after the write.
    records = [Record(f'["k{i}"]', T, '{"x":0}') for i in range(10_000)]
    await online_store.apply("v", records, 2)
    keys = [r.entity for r in records]
    for n in range(1, 6):
        reading = asyncio.ensure_future(online_store.read("v", keys))
        await asyncio.sleep(0)
        await online_store.apply("v", [Record('["k7"]', T + n, f'{{"x":{n}}}')], 2 + n)
        await reading
        assert await online_store.read("v", ['["k7"]']) == {'["k7"]': (T + n, f'{{"x":{n}}}')}
        assert len(await online_store.read("v", keys)) == 10_000


# --- the same online read on every engine -----------------------------------------------


@pytest.fixture
async def feature_store(online_store: OnlineStore, tmp_path: Path) -> AsyncIterator[FeatureStore]:
    clock = [T + 3_600 * MICROS]
    store = FeatureStore(
        SqliteDefinitionStore(tmp_path / "defs.db"),
        SqliteOfflineStore(tmp_path / "offline.db"),
        online_store,
        clock=lambda: clock[0],
    )
    await store.start()
    await store.apply(
        DefinitionSet(
            entities=(Entity(name="user", join_keys=(JoinKey(name="id", dtype=DType.INT64),)),),
            feature_views=(
                FeatureView(
                    name="stats",
                    entities=("user",),
                    ttl=timedelta(minutes=30),
                    features=(
                        Feature(name="a", dtype=DType.DOUBLE),
                        Feature(name="b", dtype=DType.STRING),
                    ),
                ),
            ),
        ),
        force=False,
        dry_run=False,
        actor=Actor("test", True),
    )
    yield store


async def test_online_reads_identical_on_every_engine(feature_store: FeatureStore) -> None:
    now = T + 3_600 * MICROS
    minute = 60 * MICROS
    await feature_store.write(
        WriteBatch(
            "b1",
            "stats",
            ["a", "b"],
            [
                WriteRow({"id": 1}, now - 5 * minute, [1.5, "x"]),
                WriteRow({"id": 2}, now - 31 * minute, [2.5, "y"]),  # expired (TTL 30 min)
                WriteRow({"id": 3}, now - 30 * minute, [None, "z"]),  # exactly at TTL: valid
                WriteRow({"id": 1}, now - 50 * minute, [9.9, "old"]),  # late row, ignored
            ],
        )
    )
    result = await feature_store.read_online(
        OnlineQuery(["stats:b", "stats:a"], "", [{"id": i} for i in (4, 3, 2, 1)], [])
    )
    assert [c.name for c in result.schema] == ["stats:b", "stats:a"]
    assert [[(cell.status, cell.value) for cell in row] for row in result.rows] == [
        [(Status.NOT_FOUND, None), (Status.NOT_FOUND, None)],
        [(Status.PRESENT, "z"), (Status.NULL_VALUE, None)],
        [(Status.EXPIRED, None), (Status.EXPIRED, None)],
        [(Status.PRESENT, "x"), (Status.PRESENT, 1.5)],
    ]
    assert result.rows[3][0].event_us == now - 5 * minute
