"""Contract of the feature definition store, on SQLite and a real PostgreSQL; with
PostgreSQL, replicas share definitions and a stale apply is refused, never lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pg_server import PostgresServer

from mlbackend_features.core.model import (
    DType,
    Entity,
    Feature,
    FeatureService,
    FeatureView,
    JoinKey,
    StandardScale,
)
from mlbackend_features.stores.definitions import DefinitionStore, SqliteDefinitionStore
from mlbackend_features.stores.definitions_postgres import PostgresDefinitionStore
from mlbackend_runtime.errors import Aborted

T0 = datetime(2026, 1, 1, tzinfo=UTC)
USER = Entity(name="user", join_keys=(JoinKey(name="id", dtype=DType.INT64),), revision=1)
VIEW = FeatureView(
    name="stats",
    entities=("user",),
    features=(Feature(name="amount", dtype=DType.DOUBLE),),
    ttl=timedelta(hours=1),
    revision=1,
    create_time=T0,
    update_time=T0,
)
SERVICE = FeatureService(
    name="fraud",
    feature_refs=("stats:amount",),
    transforms=(StandardScale(output="z", input="stats:amount", mean=1.0, std=2.0),),
    version=1,
    create_time=T0,
)


@pytest.fixture(params=["sqlite", "postgresql"])
async def definition_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DefinitionStore]:
    store: DefinitionStore
    if request.param == "sqlite":
        store = SqliteDefinitionStore(tmp_path / "defs.db")
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        store = PostgresDefinitionStore(server.create_database())
    yield store
    await store.close()


async def test_definitions_round_trip(definition_store: DefinitionStore) -> None:
    assert await definition_store.load() == ({}, {}, {})
    await definition_store.save([USER], [VIEW], [SERVICE])
    v2 = VIEW.model_copy(update={"revision": 2, "description": "changed"})
    refit = SERVICE.model_copy(update={"version": 2})
    await definition_store.save([], [v2], [refit])
    loaded = await definition_store.load()
    assert loaded.entities == {"user": USER}
    assert loaded.views == {"stats": v2}
    assert loaded.services == {"fraud": [SERVICE, refit]}


async def test_replicas_share_definitions_and_stale_applies_abort(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database()
    first, second = PostgresDefinitionStore(url), PostgresDefinitionStore(url)
    try:
        await first.save([USER], [VIEW], [SERVICE])
        assert (await second.load()).views == {"stats": VIEW}
        # Both replicas planned revision 2 of the view from revision 1: one wins.
        await first.save([], [VIEW.model_copy(update={"revision": 2})], [])
        with pytest.raises(Aborted, match="view 'stats'"):
            await second.save([], [VIEW.model_copy(update={"revision": 2, "owner": "x"})], [])
        with pytest.raises(Aborted, match="entity 'user'"):
            await second.save([USER], [], [])  # created already
        with pytest.raises(Aborted, match="feature service 'fraud'"):
            await second.save([], [], [SERVICE])
        loaded = await second.load()
        assert loaded.views["stats"].owner == "" and loaded.views["stats"].revision == 2
        assert loaded.services == {"fraud": [SERVICE]}
    finally:
        await first.close()
        await second.close()
