"""The feature store server with its definitions and offline commit log on a real
PostgreSQL (``database_url``): it answers exactly as the SQLite-backed one, and two
replicas on the same database share definitions and history."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_server import PostgresServer, postgres
from test_feature_store import T0, batch, key, online, ready, row, ts, values

from mlbackend.features.v1 import features_pb2 as f
from mlbackend_clients.features import FeatureStoreClient

from conftest import Connect, StartService

__all__ = ["postgres"]  # the session fixture, used by the tests below


async def scenario(client: FeatureStoreClient, now: datetime) -> list[Any]:
    """Writes (out of order, a resent batch), then every kind of read; the answers."""
    first = batch(
        [
            row("u1", T0, 1.0, 1, "DE"),
            row("u1", T0 + timedelta(minutes=30), 2.0, 2, "FR"),
            row("u2", T0 + timedelta(hours=5), 5.0, 5, "US"),
            row("u3", now - timedelta(minutes=1), 14.0, 3, "FR"),
        ],
        batch_id="first",
    )
    late = batch(
        [row("u1", T0 + timedelta(minutes=10), 9.0, 9, "US"), row("u3", now, 10.0, 4, "DE")],
        batch_id="late",
    )
    answers: list[Any] = []
    for request in (first, late, first):
        ack = await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=request), timeout=10)
        answers.append((ack.batch_id, ack.row_count, ack.sequence))
    answers.append(
        values(await online(client, ["u3", "u9", "u1"], feature_refs=["user_stats:country"]))
    )
    moments = [
        T0 - timedelta(seconds=1), T0, T0 + timedelta(minutes=10), T0 + timedelta(minutes=30),
        T0 + timedelta(minutes=90), T0 + timedelta(minutes=91), T0 + timedelta(hours=5), now,
    ]  # fmt: skip
    rows = [
        f.EntityRow(
            entity_key=key(user),
            event_time=ts(when),
            request_inputs={"values": {"tx_amount": {"double_value": 7.0}}},
        )
        for when in moments
        for user in ("u1", "u2", "u3", "u9")
    ]
    for request in (
        f.GetHistoricalFeaturesRequest(
            feature_refs=["user_stats:amount", "user_stats:txn_count", "user_stats:country"],
            entity_rows=rows,
            chunk_size=7,
        ),
        f.GetHistoricalFeaturesRequest(feature_service="fraud", entity_rows=rows),
    ):
        chunks = [ch async for ch in client.stub.GetHistoricalFeatures(request, timeout=30)]
        answers.append([(ch.start_row_index, values(ch)) for ch in chunks])
        answers.append(
            [
                [
                    (v.event_time.ToMicroseconds() if v.HasField("event_time") else None)
                    for v in r.values
                ]
                for ch in chunks
                for r in ch.rows
            ]
        )
    stats = await client.stub.GetFeatureStatistics(
        f.GetFeatureStatisticsRequest(
            feature_view="user_stats", quantiles=[0.1, 0.5, 0.9], histogram_bins=3
        ),
        timeout=10,
    )
    stats.statistics.ClearField("compute_time")
    stats.statistics.ClearField("end_time")
    # Mean and std are sums in floating point, in each engine's own order.
    moments = []
    for feature in stats.statistics.features:
        moments += [feature.mean, feature.std]
        feature.ClearField("mean")
        feature.ClearField("std")
    answers.append(stats.statistics.SerializeToString(deterministic=True))
    answers.append(moments)
    return answers


async def test_postgres_backed_server_answers_like_the_sqlite_one(
    start_service: StartService, connect: Connect, postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database()
    answers = []
    now = datetime.now(UTC)
    for name, settings in (("sqlite", {}), ("postgresql", {"database_url": url})):
        _, client = await ready(start_service, connect, data_dir=tmp_path / name, **settings)
        answers.append(await scenario(client, now))
    assert answers[0][:-1] == answers[1][:-1]
    assert answers[0][-1] == pytest.approx(answers[1][-1], rel=1e-12)
    assert answers[1][:3] == [("first", 4, 1), ("late", 2, 2), ("first", 4, 1)]
    assert answers[1][3][0] == [("FEATURE_STATUS_PRESENT", "DE")]
    statuses = {cell[0] for _, chunk in answers[1][4] for cells in chunk for cell in cells}
    assert statuses == {
        "FEATURE_STATUS_PRESENT", "FEATURE_STATUS_NOT_FOUND", "FEATURE_STATUS_EXPIRED"
    }  # fmt: skip
    # The PostgreSQL server kept nothing durable in its data directory.
    assert not (tmp_path / "postgresql" / "features" / "offline.db").exists()
    assert not (tmp_path / "postgresql" / "features" / "definitions.db").exists()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM feature_history").fetchone() == (6,)
        assert conn.execute("SELECT count(*) FROM feature_def_views").fetchone() == (1,)


async def test_replicas_share_definitions_and_history(
    start_service: StartService, connect: Connect, postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database()
    settings = {"database_url": url, "maintenance_seconds": 0.2}
    server_a, client_a = await ready(start_service, connect, data_dir=tmp_path / "a", **settings)
    server_b = await start_service("features", data_dir=tmp_path / "b", **settings)
    client_b: FeatureStoreClient = connect("features", server_b)
    # B learns the definitions A applied from the shared store (bounded wait).
    deadline = time.monotonic() + 10
    while True:
        listed = await client_b.stub.ListFeatureViews(f.ListFeatureViewsRequest(), timeout=5)
        if listed.feature_views or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert [v.name for v in listed.feature_views] == ["user_stats"]
    now = datetime.now(UTC)
    ack_b = await client_b.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", now, 3.0, 1, "DE")])), timeout=10
    )
    ack_a = await client_a.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u2", now, 4.0, 2, "FR")])), timeout=10
    )
    assert (ack_b.sequence, ack_a.sequence) == (1, 2)
    rows = [f.EntityRow(entity_key=key(u), event_time=ts(now)) for u in ("u1", "u2")]
    request = f.GetHistoricalFeaturesRequest(feature_refs=["user_stats:amount"], entity_rows=rows)
    for client in (client_a, client_b):
        chunks = [ch async for ch in client.stub.GetHistoricalFeatures(request, timeout=10)]
        assert [cells for ch in chunks for cells in values(ch)] == [
            [("FEATURE_STATUS_PRESENT", 3.0)],
            [("FEATURE_STATUS_PRESENT", 4.0)],
        ]
    # Each replica has its own online store here: both follow the shared log, so each
    # serves the other's write online within a bounded time.
    expected = [[("FEATURE_STATUS_PRESENT", 3.0)], [("FEATURE_STATUS_PRESENT", 4.0)]]
    for client in (client_a, client_b):
        deadline = time.monotonic() + 10
        while True:
            got = values(await online(client, ["u1", "u2"], feature_refs=["user_stats:amount"]))
            if got == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert got == expected
    await server_a.stop(0)
    await server_b.stop(0)
