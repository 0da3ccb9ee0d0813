"""Two feature store processes on one commit log: the online store never skips a batch.

A replica that commits a batch and dies before applying it online must not leave a
hole that the other replica's later write papers over by moving the watermark past it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

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
from mlbackend_features.stores.online_sqlite import SqliteOnlineStore
from mlbackend_runtime.errors import NotFound

T = 1_767_225_600 * MICROS  # 2026-01-01


def replica(base: Path) -> FeatureStore:
    """A store on the shared definitions, log and online files, as a second process has."""
    return FeatureStore(
        SqliteDefinitionStore(base / "defs.db"),
        SqliteOfflineStore(base / "offline.db"),
        SqliteOnlineStore(base / "online.db"),
        clock=lambda: T + 60 * MICROS,
    )


STATS = DefinitionSet(
    entities=(Entity(name="user", join_keys=(JoinKey(name="id", dtype=DType.INT64),)),),
    feature_views=(
        FeatureView(
            name="stats",
            entities=("user",),
            ttl=timedelta(days=1),
            features=(Feature(name="x", dtype=DType.DOUBLE),),
        ),
    ),
)


async def test_a_batch_committed_but_never_applied_is_applied_by_the_next_writer(
    tmp_path: Path,
) -> None:
    a, b = replica(tmp_path), replica(tmp_path)
    await a.start()
    await a.apply(STATS, force=False, dry_run=False, actor=Actor("test", True))
    await b.start()
    # B commits batch 1 normally, then commits batch 2 and "dies" before applying it.
    await b.write(WriteBatch("b1", "stats", ["x"], [WriteRow({"id": 1}, T, [1.0])]))
    entity = json.dumps([2])
    orphan = await b._offline.append("b2", "stats", [Record(entity, T, json.dumps({"x": 2.0}))])
    assert orphan.sequence == 2
    # A's next write is sequence 3; A last saw sequence 0, so it replays 1..3.
    ack = await a.write(WriteBatch("a3", "stats", ["x"], [WriteRow({"id": 3}, T, [3.0])]))
    assert ack.sequence == 3
    read = await a.read_online(OnlineQuery(["stats:x"], "", [{"id": i} for i in (1, 2, 3)], []))
    assert [(row[0].status, row[0].value) for row in read.rows] == [
        (Status.PRESENT, 1.0),
        (Status.PRESENT, 2.0),
        (Status.PRESENT, 3.0),
    ]
    for store in (a, b):
        await store.close()


async def test_a_view_another_replica_just_applied_is_found_at_once(tmp_path: Path) -> None:
    a, b = replica(tmp_path), replica(tmp_path)
    await a.start()
    await b.start()  # B loaded no definitions, and no refresh runs in this test
    await a.apply(STATS, force=False, dry_run=False, actor=Actor("test", True))
    ack = await b.write(WriteBatch("b1", "stats", ["x"], [WriteRow({"id": 1}, T, [1.0])]))
    assert ack.row_count == 1
    read = await b.read_online(OnlineQuery(["stats:x"], "", [{"id": 1}], []))
    assert (read.rows[0][0].status, read.rows[0][0].value) == (Status.PRESENT, 1.0)
    # A name nobody applied is still unknown (and reloads are rate-limited).
    for _ in range(3):
        with pytest.raises(NotFound, match="nope"):
            await b.write(WriteBatch("b2", "nope", ["x"], [WriteRow({"id": 1}, T, [1.0])]))
    for store in (a, b):
        await store.close()
