"""The gateway's experiment store contract, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pg_server import PostgresServer

from mlbackend_gateway.core.experiments import Experiment, ExperimentState, Variant
from mlbackend_gateway.core.model import VersionSelector
from mlbackend_gateway.stores.sql import SqlExperimentStore, engine_url
from mlbackend_runtime.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SqlExperimentStore]:
    if request.param == "sqlite":
        url = engine_url(None, tmp_path)
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = engine_url(server.create_database(), tmp_path)
    store = SqlExperimentStore(url)
    yield store
    await store.close()


def experiment(name: str, model: str = "m", offset: int = 0) -> Experiment:
    return Experiment(
        name=f"experiments/{name}",
        model=model,
        variants=(
            Variant("control", VersionSelector(alias="production"), 3),
            Variant("treatment", VersionSelector(version=2), 1),
        ),
        shadow_variants=(Variant("shadow", VersionSelector(version=3)),),
        salt="salt",
        description="d",
        create_time=T0 + timedelta(seconds=offset),
        created_by="alice",
    )


async def test_round_trip_and_one_running_per_model(store: SqlExperimentStore) -> None:
    created = await store.create(experiment("a"))
    assert created == replace(experiment("a"), state=ExperimentState.RUNNING)
    assert await store.get("experiments/a") == created
    assert await store.running_for("m") == created
    with pytest.raises(AlreadyExists):
        await store.create(replace(experiment("a"), model="other"))
    with pytest.raises(FailedPrecondition):
        await store.create(experiment("b"))
    with pytest.raises(NotFound):
        await store.get("experiments/nope")
    stopped = await store.stop("experiments/a", "winner: treatment", T0 + timedelta(hours=1))
    assert stopped.state is ExperimentState.STOPPED
    assert stopped.stop_reason == "winner: treatment"
    assert stopped.stop_time == T0 + timedelta(hours=1)
    # Idempotent, and the model is free for a new experiment.
    assert await store.stop("experiments/a", "again", T0 + timedelta(hours=2)) == stopped
    assert await store.running_for("m") is None
    await store.create(experiment("b", offset=10))


async def test_concurrent_creates_for_one_model_admit_one(store: SqlExperimentStore) -> None:
    results = await asyncio.gather(
        *(store.create(experiment(f"e{i}")) for i in range(6)), return_exceptions=True
    )
    assert sum(isinstance(r, Experiment) for r in results) == 1
    assert all(isinstance(r, Experiment | FailedPrecondition) for r in results)


async def test_list_pages_newest_first_with_filters(store: SqlExperimentStore) -> None:
    for i in range(5):
        await store.create(experiment(f"x{i}", model=f"m{i}", offset=i))
    await store.stop("experiments/x1", "", T0 + timedelta(hours=1))
    names: list[str] = []
    token = ""
    while True:
        page = await store.list("", None, 2, token)
        names += [e.name for e in page.experiments]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"experiments/x{i}" for i in (4, 3, 2, 1, 0)]
    stopped = await store.list("", ExperimentState.STOPPED, 10, "")
    assert [e.name for e in stopped.experiments] == ["experiments/x1"]
    only = await store.list("m3", None, 10, "")
    assert [e.name for e in only.experiments] == ["experiments/x3"]
    with pytest.raises(InvalidInput):
        await store.list("", None, 10, "garbage")
