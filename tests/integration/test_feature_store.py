"""The feature store over real gRPC: definitions, validated writes, push acks, online
reads with statuses, point-in-time retrieval, transforms, limits and restarts."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sweeps import sweep, sweep_service, sweep_streamed

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend_clients.features import FEATURE_SERVICE_KEY, FeatureStoreClient, arrow_stream

from conftest import Connect, StartService

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def key(user: str) -> c.EntityKey:
    return c.EntityKey(join_keys={"user_id": c.Value(string_value=user)})


def definitions() -> f.ApplyDefinitionsRequest:
    return f.ApplyDefinitionsRequest(
        entities=[
            f.Entity(name="user", join_keys=[f.JoinKey(name="user_id", dtype=c.DATA_TYPE_STRING)])
        ],
        feature_views=[
            f.FeatureView(
                name="user_stats",
                entities=["user"],
                ttl=duration_pb2.Duration(seconds=3600),
                features=[
                    f.Feature(
                        name="amount",
                        dtype=c.DATA_TYPE_DOUBLE,
                        constraints=f.FeatureConstraints(min=0, not_null=True),
                    ),
                    f.Feature(name="txn_count", dtype=c.DATA_TYPE_INT64),
                    f.Feature(
                        name="country",
                        dtype=c.DATA_TYPE_STRING,
                        constraints=f.FeatureConstraints(
                            allowed_values=[c.Value(string_value=v) for v in ("DE", "FR", "US")]
                        ),
                    ),
                ],
            )
        ],
        feature_services=[
            f.FeatureService(
                name="fraud",
                feature_refs=["user_stats:amount", "user_stats:country"],
                request_inputs=[f.RequestInput(name="tx_amount", dtype=c.DATA_TYPE_DOUBLE)],
                transforms=[
                    f.Transform(
                        output="amount_z",
                        standard_scale=f.Transform.StandardScale(
                            input="user_stats:amount", mean=10, std=2
                        ),
                    ),
                    f.Transform(
                        output="tx_ratio",
                        ratio=f.Transform.Ratio(
                            numerator="tx_amount", denominator="user_stats:amount"
                        ),
                    ),
                    f.Transform(
                        output="country",
                        one_hot=f.Transform.OneHot(
                            input="user_stats:country", categories=["DE", "FR"], include_other=True
                        ),
                    ),
                ],
                outputs=["amount_z", "tx_ratio", "country"],
            )
        ],
    )


def row(user: str, when: datetime, amount: float, count: int, country: str) -> f.FeatureRow:
    return f.FeatureRow(
        entity_key=key(user),
        event_time=ts(when),
        values=[
            c.Value(double_value=amount),
            c.Value(int64_value=count),
            c.Value(string_value=country),
        ],
    )


def batch(rows: list[f.FeatureRow], batch_id: str = "") -> f.FeatureBatch:
    return f.FeatureBatch(
        batch_id=batch_id,
        feature_view="user_stats",
        features=["amount", "txn_count", "country"],
        rows=rows,
    )


def violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    assert status is not None
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


async def ready(start_service: StartService, connect: Connect, **settings: Any) -> Any:
    server = await start_service("features", **settings)
    client: FeatureStoreClient = connect("features", server)
    await client.stub.ApplyDefinitions(definitions(), timeout=10)
    return server, client


async def online(client: FeatureStoreClient, users: list[str], **kw: Any) -> Any:
    return await client.stub.GetOnlineFeatures(
        f.GetOnlineFeaturesRequest(entity_keys=[key(u) for u in users], **kw), timeout=10
    )


def values(response: Any) -> list[list[tuple[str, Any]]]:
    out = []
    for r in response.rows:
        cells = []
        for v in r.values:
            kind = v.value.WhichOneof("kind")
            cells.append((c.FeatureStatus.Name(v.status), getattr(v.value, kind) if kind else None))
        out.append(cells)
    return out


async def test_apply_is_versioned_and_idempotent(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    again = await client.stub.ApplyDefinitions(definitions(), timeout=10)
    assert {ch.change_type for ch in again.changes} == {f.CHANGE_TYPE_UNCHANGED}
    service = (
        await client.stub.GetFeatureService(f.GetFeatureServiceRequest(name="fraud"))
    ).feature_service
    assert service.version == 1
    assert [s.name for s in service.output_schema] == [
        "amount_z", "tx_ratio", "country=DE", "country=FR", "country=__other__",
    ]  # fmt: skip
    # A refit is a new version; the old one stays readable.
    changed = definitions()
    changed.feature_services[0].transforms[0].standard_scale.mean = 11
    answer = await client.stub.ApplyDefinitions(changed, timeout=10)
    assert answer.changes[-1].revision == 2
    old = await client.stub.GetFeatureService(f.GetFeatureServiceRequest(name="fraud@1"))
    assert old.feature_service.transforms[0].standard_scale.mean == 10
    # An incompatible change is refused unless forced.
    breaking = f.ApplyDefinitionsRequest(feature_views=definitions().feature_views)
    breaking.feature_views[0].features[1].dtype = c.DATA_TYPE_STRING
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.ApplyDefinitions(breaking, timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "txn_count" in (raised.value.details() or "")
    view = await client.stub.GetFeatureView(f.GetFeatureViewRequest(name="user_stats"))
    assert view.feature_view.features[1].dtype == c.DATA_TYPE_INT64
    # Removing a feature a service reads is incompatible too; force needs admin (auth off
    # on loopback makes the caller admin) and then goes through.
    removing = f.ApplyDefinitionsRequest(feature_views=definitions().feature_views)
    del removing.feature_views[0].features[0]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.ApplyDefinitions(removing, timeout=10)
    assert "fraud@1" in (raised.value.details() or "")
    removing.force = True
    forced = await client.stub.ApplyDefinitions(removing, timeout=10)
    assert forced.changes[0].change_type == f.CHANGE_TYPE_FORCED
    assert view.feature_view.online  # unset means online
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.GetFeatureView(f.GetFeatureViewRequest(name="nope"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_write_then_online_read_with_statuses_and_order(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    now = datetime.now(UTC)
    ack = await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(
            batch=batch(
                [
                    row("u1", now - timedelta(minutes=5), 12.0, 3, "DE"),
                    row("u2", now - timedelta(hours=2), 7.0, 1, "US"),  # past the 1 h TTL
                ],
                "b1",
            )
        ),
        timeout=10,
    )
    assert (ack.batch_id, ack.row_count, ack.sequence) == ("b1", 2, 1)
    # An older row for u1 arrives late: it must not win.
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", now - timedelta(hours=1), 99.0, 9, "FR")])),
        timeout=10,
    )
    response = await online(
        client,
        ["u3", "u1", "u2"],
        feature_refs=["user_stats:country", "user_stats:amount", "user_stats:txn_count"],
    )
    assert [s.name for s in response.schema] == [
        "user_stats:country", "user_stats:amount", "user_stats:txn_count",
    ]  # fmt: skip
    assert values(response) == [
        [("FEATURE_STATUS_NOT_FOUND", None)] * 3,
        [
            ("FEATURE_STATUS_PRESENT", "DE"),
            ("FEATURE_STATUS_PRESENT", 12.0),
            ("FEATURE_STATUS_PRESENT", 3),
        ],
        [("FEATURE_STATUS_EXPIRED", None)] * 3,
    ]
    assert response.rows[1].values[0].event_time.ToDatetime(UTC) == (
        now - timedelta(minutes=5)
    ).replace(microsecond=(now - timedelta(minutes=5)).microsecond)
    # Re-sending a batch id is acknowledged again, not stored twice.
    again = await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u9", now, 1.0, 1, "DE")], "b1")), timeout=10
    )
    assert again.sequence == 1
    assert values(await online(client, ["u9"], feature_refs=["user_stats:amount"])) == [
        [("FEATURE_STATUS_NOT_FOUND", None)]
    ]


async def test_rejected_batch_lists_every_violation_and_stores_nothing(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    bad = batch(
        [
            row("u1", T0, 1.0, 1, "DE"),
            row("u2", T0, -5.0, 1, "XX"),  # below min, not allowed
            f.FeatureRow(
                entity_key=key("u3"),
                event_time=ts(T0),
                values=[
                    c.Value(double_value=float("nan")),
                    c.Value(string_value="x"),
                    c.Value(),
                ],
            ),
            f.FeatureRow(
                entity_key=c.EntityKey(join_keys={"user_id": c.Value(int64_value=4)}),
                values=[c.Value(double_value=1.0), c.Value(int64_value=1), c.Value()],
            ),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=bad), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field for field, _ in violations(raised.value)) == [
        "batch.rows[1].values.amount",
        "batch.rows[1].values.country",
        "batch.rows[2].values.amount",
        "batch.rows[2].values.txn_count",
        "batch.rows[3].entity_key.user_id",
        "batch.rows[3].event_time",
    ]
    response = await online(client, ["u1"], feature_refs=["user_stats:amount"])
    assert values(response) == [[("FEATURE_STATUS_NOT_FOUND", None)]]
    # Unknown view, unknown feature.
    unknown = batch([row("u1", T0, 1.0, 1, "DE")])
    unknown.feature_view = "nope"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=unknown), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "batch.feature_view" in (raised.value.details() or "")
    unknown = batch([row("u1", T0, 1.0, 1, "DE")])
    unknown.features[1] = "nope"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=unknown), timeout=10)
    assert ("batch.features[1]", "unknown feature of view 'user_stats'") in violations(raised.value)


async def test_limits_give_field_errors_and_the_server_stays_up(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    huge = batch([row("u1", T0, 1.0, 1, "DE")])
    huge.rows[0].values[2].string_value = "x" * 1_000_000
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=huge), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value)[0][0] == "batch.rows[0].values.country"

    future = batch([row("u1", datetime(9999, 1, 1, tzinfo=UTC), 1.0, 1, "DE")])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=future), timeout=10)
    assert violations(raised.value)[0][0] == "batch.rows[0].event_time"

    for count in (10_001, 100_000):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await online(
                client, [f"u{i}" for i in range(count)], feature_refs=["user_stats:amount"]
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(raised.value)[0][0] == "entity_keys"

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await online(client, ["u1"], feature_refs=["user_stats:nope", "other:x", "bad"])
    assert [v[0] for v in violations(raised.value)] == [
        "feature_refs[0]", "feature_refs[1]", "feature_refs[2]",
    ]  # fmt: skip

    over = batch([row("u1", T0, 1.0, 1, "x" * 60_000) for _ in range(1_200)])  # ~72 MB
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=over), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # 10,000 keys is within the limit, and the server is still fine.
    response = await online(
        client, [f"u{i}" for i in range(10_000)], feature_refs=["user_stats:amount"]
    )
    assert len(response.rows) == 10_000
    assert await client.check_health(timeout=5) == "SERVING"


async def _push(batches: list[f.FeatureBatch]) -> AsyncIterator[f.PushFeaturesRequest]:
    for b in batches:
        yield f.PushFeaturesRequest(batch=b)
        await asyncio.sleep(0)


async def test_push_stream_acks_every_batch(start_service: StartService, connect: Connect) -> None:
    _, client = await ready(start_service, connect)
    now = datetime.now(UTC)
    batches = [
        batch([row("u1", now, 1.0, 1, "DE")], "p1"),
        batch([row("u2", now, -1.0, 1, "DE"), row("u3", now, 1.0, 1, "ZZ")], "p2"),
        batch([row("u2", now, 2.0, 2, "FR")], "p3"),
    ]
    acks = [ack async for ack in client.stub.PushFeatures(_push(batches), timeout=10)]
    assert [(a.batch_id, a.accepted) for a in acks] == [("p1", True), ("p2", False), ("p3", True)]
    assert acks[0].sequence == 1 and acks[2].sequence == 2
    assert acks[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [(v.row_index, v.feature) for v in acks[1].violations] == [
        (0, "amount"),
        (1, "country"),
    ]
    response = await online(client, ["u1", "u2", "u3"], feature_refs=["user_stats:amount"])
    assert values(response) == [
        [("FEATURE_STATUS_PRESENT", 1.0)],
        [("FEATURE_STATUS_PRESENT", 2.0)],
        [("FEATURE_STATUS_NOT_FOUND", None)],
    ]


async def test_transforms_apply_online_and_historically(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    now = datetime.now(UTC)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(
            batch=batch(
                [row("u1", now - timedelta(minutes=1), 14.0, 3, "FR"),
                 row("u2", now - timedelta(minutes=1), 10.0, 3, "US")]
            )
        ),
        timeout=10,
    )  # fmt: skip
    inputs = [c.FeatureMap(values={"tx_amount": c.Value(double_value=7.0)})]
    response = await online(
        client, ["u1", "u2", "u3"], feature_service="fraud", request_inputs=inputs
    )
    assert response.feature_service == "fraud@1"
    expected = [
        [2.0, 0.5, 0.0, 1.0, 0.0],
        [0.0, 0.7, 0.0, 0.0, 1.0],
    ]
    got = [[v for _, v in r] for r in values(response)]
    assert got[:2] == expected
    assert {s for s, _ in values(response)[2]} == {"FEATURE_STATUS_NOT_FOUND"}

    rows = [
        f.EntityRow(
            entity_key=key(u), event_time=ts(now),
            request_inputs=c.FeatureMap(values={"tx_amount": c.Value(double_value=7.0)}),
        )
        for u in ("u1", "u2", "u3")
    ]  # fmt: skip
    chunks = [
        chunk
        async for chunk in client.stub.GetHistoricalFeatures(
            f.GetHistoricalFeaturesRequest(feature_service="fraud", entity_rows=rows, chunk_size=2),
            timeout=10,
        )
    ]
    assert [ch.start_row_index for ch in chunks] == [0, 2]
    assert chunks[0].feature_service == "fraud@1"
    historical = [[v for _, v in r] for ch in chunks for r in values(ch)]
    assert historical[:2] == expected
    # A missing request input is a field error.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await online(client, ["u1"], feature_service="fraud")
    assert violations(raised.value)[0][0] == "request_inputs[0].tx_amount"


async def _swept_reads(client: Any) -> tuple[datetime, list[f.GetOnlineFeaturesRequest]]:
    """The bad-request sweeps' start: one user written a minute ago, and two valid reads
    of it (a feature service with a request input, and feature refs)."""
    now = datetime.now(UTC)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", now - timedelta(minutes=1), 14.0, 3, "FR")])),
        timeout=10,
    )
    inputs = c.FeatureMap(values={"tx_amount": c.Value(double_value=7.0)})
    reads = [
        f.GetOnlineFeaturesRequest(entity_keys=[key("u1")], feature_service="fraud",
                                   request_inputs=[inputs]),
        f.GetOnlineFeaturesRequest(entity_keys=[key("u1"), key("u2")],
                                   feature_refs=["user_stats:amount", "user_stats:country"]),
    ]  # fmt: skip
    return now, reads


async def test_mangled_online_reads_get_the_callers_fault_codes(
    start_service: StartService, connect: Connect
) -> None:
    """Online reads with bytes flipped, cut, inserted or repeated (the usual read is
    parsed in C), or with fields set to edge values, cleared, added or removed (seeded),
    get an answer or a status that is the caller's fault, an INVALID_ARGUMENT naming its
    fields; the store then still reads the same rows."""
    server, client = await ready(start_service, connect)
    now, seeds = await _swept_reads(client)
    rng = random.Random(int(os.environ.get("MLBACKEND_TEST_SEED", "20261208")))
    count = int(os.environ.get("MLBACKEND_TEST_MANGLED", "600"))
    path = "/mlbackend.features.v1.FeatureStoreService/GetOnlineFeatures"
    async with grpc.aio.insecure_channel(server.address) as channel:
        codes = await sweep(channel, path, f.GetOnlineFeaturesResponse, seeds, count, rng)
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes, codes
    response = await client.stub.GetOnlineFeatures(seeds[0], timeout=10)
    assert [[v for _, v in r] for r in values(response)] == [[2.0, 0.5, 0.0, 1.0, 0.0]]
    # A timestamp past the year 9999 as a key: the field named (it used to be INTERNAL).
    far = c.Value(timestamp_value=timestamp_pb2.Timestamp(seconds=2**40))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.GetOnlineFeatures(
            f.GetOnlineFeaturesRequest(
                entity_keys=[c.EntityKey(join_keys={"user_id": far})],
                feature_refs=["user_stats:amount"],
            ),
            timeout=10,
        )
    assert [field for field, _ in violations(raised.value)] == [
        "entity_keys[0].join_keys.user_id.timestamp_value"
    ]

    # Last, as they may change definitions and rows: every other unary method.
    window_start = timestamp_pb2.Timestamp(seconds=int(now.timestamp()) - 3600)
    valid: dict[str, list[Message]] = {
        "ApplyDefinitions": [definitions()],
        "GetEntity": [f.GetEntityRequest(name="user")],
        "ListEntities": [f.ListEntitiesRequest(page_size=1)],
        "GetFeatureView": [f.GetFeatureViewRequest(name="user_stats")],
        "ListFeatureViews": [f.ListFeatureViewsRequest(entity="user", page_size=1)],
        "GetFeatureService": [f.GetFeatureServiceRequest(name="fraud")],
        "ListFeatureServices": [f.ListFeatureServicesRequest(page_size=1)],
        "WriteFeatures": [f.WriteFeaturesRequest(batch=batch([row("u7", now, 1.0, 2, "DE")]))],
        "GetFeatureStatistics": [f.GetFeatureStatisticsRequest(
            feature_view="user_stats", features=["amount"], start_time=window_start,
            histogram_bins=4, quantiles=[0.5])],
    }  # fmt: skip
    async with grpc.aio.insecure_channel(server.address) as channel:
        codes = await sweep_service(
            channel, f, "FeatureStoreService", valid, max(count // 3, 20), rng
        )
    for name, seen in codes.items():
        assert grpc.StatusCode.OK in seen, (name, seen)


async def test_bad_messages_on_streams_get_the_callers_fault_codes(
    start_service: StartService, connect: Connect
) -> None:
    """The streaming methods' calls, one message mangled or with fields changed (and
    for streamed requests now and then one dropped or repeated; seeded): each message
    answered parses, and a call that fails gets a status that is the caller's fault,
    an INVALID_ARGUMENT naming its fields; the store then still reads the same rows."""
    server, client = await ready(start_service, connect)
    now, reads = await _swept_reads(client)
    inputs = reads[0].request_inputs[0]
    streamed_reads = [
        f.StreamOnlineFeaturesRequest(read=r, request_id=f"{i:032x}")
        for i, r in enumerate(reads, start=1)
    ]
    pushes = [
        f.PushFeaturesRequest(batch=batch([row("u5", now, 1.0, 1, "DE")], "s1")),
        f.PushFeaturesRequest(batch=batch([row("u6", now, 2.0, 2, "FR")], "s2")),
    ]
    history = f.GetHistoricalFeaturesRequest(
        feature_service="fraud",
        chunk_size=1,
        entity_rows=[
            f.EntityRow(entity_key=key(u), event_time=ts(now), request_inputs=inputs)
            for u in ("u1", "u2")
        ],
    )
    materialize = f.MaterializeRequest(
        feature_views=["user_stats"], start_time=ts(now - timedelta(hours=1)), end_time=ts(now)
    )
    service = "/mlbackend.features.v1.FeatureStoreService/"
    both: dict[str, Any] = {"request_streaming": True, "response_streaming": True}
    # A read's own timeout may say its deadline has passed.
    timed = {**both, "also": frozenset({grpc.StatusCode.DEADLINE_EXCEEDED})}
    answers = {"request_streaming": False, "response_streaming": True}
    methods: list[tuple[str, Any, list[list[Message]], dict[str, Any]]] = [
        ("StreamOnlineFeatures", f.StreamOnlineFeaturesResponse,
         [streamed_reads[:1], streamed_reads, streamed_reads[::-1]], timed),
        ("PushFeatures", f.PushFeaturesResponse, [pushes[:1], pushes], both),
        ("GetHistoricalFeatures", f.GetHistoricalFeaturesResponse, [[history]], answers),
        ("Materialize", f.MaterializeResponse, [[materialize]], answers),
    ]  # fmt: skip
    rng = random.Random(int(os.environ.get("MLBACKEND_TEST_SEED", "20261208")))
    count = int(os.environ.get("MLBACKEND_TEST_MANGLED", "600")) // 3
    async with grpc.aio.insecure_channel(server.address) as channel:
        for name, response_type, calls, streaming in methods:
            codes = await sweep_streamed(
                channel, service + name, response_type, calls, count, rng, **streaming
            )
            assert grpc.StatusCode.OK in codes, (name, codes)
    response = await client.stub.GetOnlineFeatures(reads[0], timeout=10)
    assert [[v for _, v in r] for r in values(response)] == [[2.0, 0.5, 0.0, 1.0, 0.0]]


async def test_one_refusal_names_every_bad_key_and_input(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    now = datetime.now(UTC)
    typo = c.EntityKey(join_keys={"user_id": c.Value(string_value="u1"),
                                  "usr": c.Value(string_value="u1")})  # fmt: skip
    request = f.GetOnlineFeaturesRequest(
        feature_service="fraud",
        entity_keys=[key("u1"), c.EntityKey(), typo],
        request_inputs=[
            c.FeatureMap(values={"tx_amount": c.Value(string_value="7")}),
            c.FeatureMap(),
            c.FeatureMap(values={"tx_amount": c.Value(double_value=7.0),
                                 "colour": c.Value(string_value="red")}),
        ],
    )  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.GetOnlineFeatures(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(raised.value)] == [
        "entity_keys[1].join_keys.user_id",
        "entity_keys[2].join_keys.usr",
        "request_inputs[0].tx_amount",
        "request_inputs[1].tx_amount",
        "request_inputs[2].colour",
    ]
    assert raised.value.details().startswith(
        "5 invalid input(s); first: entity_keys[1].join_keys.user_id: join key is missing"
    )
    # Historical rows likewise: a key, a time and an input, all in one refusal.
    rows = [
        f.EntityRow(entity_key=c.EntityKey(), event_time=ts(now),
                    request_inputs=c.FeatureMap(values={"tx_amount": c.Value(double_value=1)})),
        f.EntityRow(entity_key=key("u2"), request_inputs=c.FeatureMap()),
    ]  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in client.stub.GetHistoricalFeatures(
            f.GetHistoricalFeaturesRequest(feature_service="fraud", entity_rows=rows), timeout=10
        ):
            pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(raised.value)] == [
        "entity_rows[0].entity_key.join_keys.user_id",
        "entity_rows[1].event_time",
        "entity_rows[1].request_inputs.tx_amount",
    ]


async def test_request_inputs_meet_their_constraints(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    service = f.FeatureService(
        name="checked",
        feature_refs=["user_stats:amount"],
        outputs=["user_stats:amount", "tx", "flag", "raw", "soft"],
        request_inputs=[
            f.RequestInput(name="tx", dtype=c.DATA_TYPE_DOUBLE,
                           constraints=f.FeatureConstraints(min=0, max=1e6)),
            f.RequestInput(name="flag", dtype=c.DATA_TYPE_DOUBLE, nullable=True,
                           constraints=f.FeatureConstraints(allowed_values=[
                               c.Value(double_value=0), c.Value(double_value=1)])),
            f.RequestInput(name="raw", dtype=c.DATA_TYPE_DOUBLE, nullable=True,
                           constraints=f.FeatureConstraints(nan_policy=f.NAN_POLICY_ALLOW)),
            f.RequestInput(name="soft", dtype=c.DATA_TYPE_DOUBLE,
                           constraints=f.FeatureConstraints(nan_policy=f.NAN_POLICY_AS_NULL)),
        ],
    )  # fmt: skip
    await client.stub.ApplyDefinitions(
        f.ApplyDefinitionsRequest(feature_services=[service]), timeout=10
    )

    def inputs(**values: float) -> c.FeatureMap:
        return c.FeatureMap(values={k: c.Value(double_value=v) for k, v in values.items()})

    # Values within the rules are taken as given (NaN where the input allows it).
    answer = await online(client, ["u1"], feature_service="checked",
                          request_inputs=[inputs(tx=5, flag=1, raw=math.nan, soft=2)])  # fmt: skip
    got = [v for _, v in values(answer)[0]]
    assert got[1:3] == [5.0, 1.0] and math.isnan(got[3]) and got[4] == 2.0
    # Every broken rule of every row, in one refusal: by default NaN and infinities too.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await online(client, ["u1", "u2", "u3"], feature_service="checked", request_inputs=[
            inputs(tx=-1, flag=0.5, soft=1), inputs(tx=math.inf, soft=1),
            inputs(tx=math.nan, soft=math.nan)])  # fmt: skip
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == [
        ("request_inputs[0].tx", "-1.0 is below min 0.0"),
        ("request_inputs[0].flag", "0.5 is not one of the allowed values (0.0, 1.0)"),
        ("request_inputs[1].tx", "inf is not allowed (nan_policy REJECT)"),
        ("request_inputs[2].tx", "nan is not allowed (nan_policy REJECT)"),
        ("request_inputs[2].soft",
         "nan counts as missing (nan_policy AS_NULL) and the input is required"),
    ]  # fmt: skip
    # Rules that cannot hold are refused when the service is applied.
    bad = f.FeatureService(name="bad", feature_refs=["user_stats:amount"], request_inputs=[
        f.RequestInput(name="x", dtype=c.DATA_TYPE_DOUBLE,
                       constraints=f.FeatureConstraints(min=2, max=1,
                                                        allowed_values=[c.Value(string_value="a")]))
    ])  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.ApplyDefinitions(
            f.ApplyDefinitionsRequest(feature_services=[bad]), timeout=10
        )
    assert [field for field, _ in violations(raised.value)] == [
        "feature_services[0].request_inputs[0].constraints.max",
        "feature_services[0].request_inputs[0].constraints.allowed_values[0]",
    ]


async def test_historical_is_point_in_time_and_streams_every_row(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(
            batch=batch(
                [
                    row("u1", T0, 1.0, 1, "DE"),
                    row("u1", T0 + timedelta(minutes=30), 2.0, 2, "DE"),
                    row("u2", T0 + timedelta(hours=5), 5.0, 5, "DE"),
                ]
            )
        ),
        timeout=10,
    )
    queries = [
        ("u1", T0 - timedelta(seconds=1)),  # before any value
        ("u1", T0 + timedelta(minutes=29)),  # the first value
        ("u1", T0 + timedelta(minutes=30)),  # equal timestamp: the second
        ("u1", T0 + timedelta(minutes=90)),  # exactly TTL after the second: still valid
        ("u1", T0 + timedelta(minutes=90, seconds=1)),  # past TTL
        ("u2", T0),  # seen only later
        ("u9", T0),  # never seen
    ] * 300
    rows = [f.EntityRow(entity_key=key(u), event_time=ts(t)) for u, t in queries]
    chunks = [
        chunk
        async for chunk in client.stub.GetHistoricalFeatures(
            f.GetHistoricalFeaturesRequest(feature_refs=["user_stats:amount"], entity_rows=rows),
            timeout=30,
        )
    ]
    assert len(chunks) == 3 and chunks[1].start_row_index == 1000
    got = [cells[0] for ch in chunks for cells in values(ch)]
    assert len(got) == len(queries)
    assert got[:7] == [
        ("FEATURE_STATUS_NOT_FOUND", None),
        ("FEATURE_STATUS_PRESENT", 1.0),
        ("FEATURE_STATUS_PRESENT", 2.0),
        ("FEATURE_STATUS_PRESENT", 2.0),
        ("FEATURE_STATUS_EXPIRED", None),
        ("FEATURE_STATUS_NOT_FOUND", None),
        ("FEATURE_STATUS_NOT_FOUND", None),
    ]
    assert got == got[:7] * 300


async def test_statistics_materialize_and_freshness_metrics(
    start_service: StartService, connect: Connect
) -> None:
    server, client = await ready(start_service, connect)
    now = datetime.now(UTC)
    rows = [row(f"u{i}", now - timedelta(seconds=i), float(i), i, "DE") for i in range(1, 101)]
    await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=batch(rows)), timeout=10)
    stats = (
        await client.stub.GetFeatureStatistics(
            f.GetFeatureStatisticsRequest(
                feature_view="user_stats", features=["amount", "country"], quantiles=[0.5],
                histogram_bins=4,
            ),
            timeout=10,
        )
    ).statistics  # fmt: skip
    amount, country = stats.features
    assert (amount.count, amount.null_count, amount.min, amount.max) == (100, 0, 1.0, 100.0)
    assert amount.mean == pytest.approx(50.5)
    assert amount.quantiles[0].value in (50.0, 51.0)
    assert sum(amount.histogram.counts) == 100 and len(amount.histogram.bin_edges) == 5
    assert country.top_categories[0].count == 100

    progress = [p async for p in client.stub.Materialize(f.MaterializeRequest(), timeout=10)]
    assert progress[-1].done and progress[-1].rows_done == 100
    # A window past the year 2200 (valid on the wire) is named, not an INTERNAL error.
    late = timestamp_pb2.Timestamp(seconds=9_000_000_000)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.GetFeatureStatistics(
            f.GetFeatureStatisticsRequest(feature_view="user_stats", start_time=late), timeout=10
        )
    assert [field for field, _ in violations(raised.value)] == ["start_time"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in client.stub.Materialize(f.MaterializeRequest(end_time=late), timeout=10):
            pass
    assert [field for field, _ in violations(raised.value)] == ["end_time"]
    # A TTL past what a Duration may hold, likewise; a ratio's NaN default round-trips
    # through the stored definitions (it used to be stored as null, which failed to load).
    too_long = definitions()
    too_long.feature_views[0].ttl.seconds = 2**60
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.ApplyDefinitions(too_long, timeout=10)
    assert [field for field, _ in violations(raised.value)] == ["feature_views[0].ttl"]
    nan_default = definitions()
    nan_default.feature_services[0].transforms[1].ratio.default_value = math.nan
    await client.stub.ApplyDefinitions(nan_default, timeout=10)
    stored = await client.stub.GetFeatureService(f.GetFeatureServiceRequest(name="fraud"))
    assert math.isnan(stored.feature_service.transforms[1].ratio.default_value)

    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(server.metrics.url, timeout=5).read().decode()
    )
    assert 'mlbackend_features_last_write_timestamp_seconds{feature_view="user_stats"}' in text
    assert 'mlbackend_features_freshness_lag_seconds{feature_view="user_stats"}' in text


async def test_acknowledged_writes_survive_a_restart(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    server, client = await ready(start_service, connect, data_dir=tmp_path / "data")
    now = datetime.now(UTC)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", now, 3.0, 1, "DE")])), timeout=10
    )
    await server.stop(0)
    # Lose the online copy entirely: start-up replays it from the offline commit log.
    for name in ("online.db", "online.db-wal", "online.db-shm"):
        (tmp_path / "data" / "features" / name).unlink(missing_ok=True)
    server2 = await start_service("features", data_dir=tmp_path / "data")
    client2: FeatureStoreClient = connect("features", server2)
    response = await online(client2, ["u1"], feature_refs=["user_stats:amount"])
    assert values(response) == [[("FEATURE_STATUS_PRESENT", 3.0)]]
    ack = await client2.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u2", now, 4.0, 1, "DE")])), timeout=10
    )
    assert ack.sequence == 2


@pytest.mark.e2e
async def test_kill_9_during_writes_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def serve() -> tuple[asyncio.subprocess.Process, FeatureStoreClient]:
        ready_file = tmp_path / "ready.json"
        ready_file.unlink(missing_ok=True)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mlbackend_cli", "serve", "features", "--port", "0",
            "--metrics-port", "0", "--data-dir", str(data), "--ready-file", str(ready_file),
            env={**os.environ, "MLBACKEND_LOG_LEVEL": "WARNING"},
        )  # fmt: skip
        for _ in range(300):
            if ready_file.exists() and ready_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        port = json.loads(ready_file.read_text())["port"]
        return process, FeatureStoreClient.connect(f"127.0.0.1:{port}")

    process, client = await serve()
    await client.stub.ApplyDefinitions(definitions(), timeout=10)
    acked: list[str] = []
    enough = asyncio.Event()
    now = datetime.now(UTC)

    async def writer() -> None:
        for i in range(100_000):
            b = batch([row(f"k{i}-{j}", now, float(j), j, "DE") for j in range(20)], f"b{i}")
            await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=b), timeout=10)
            acked.append(f"k{i}")
            if len(acked) >= 30:
                enough.set()

    task = asyncio.create_task(writer())
    await asyncio.wait_for(enough.wait(), timeout=60)
    process.send_signal(signal.SIGKILL)
    await process.wait()
    with pytest.raises(grpc.aio.AioRpcError):
        await task
    await client.close()

    process, client = await serve()
    try:
        users = [f"{prefix}-{j}" for prefix in acked for j in range(20)]
        got: list[list[tuple[str, Any]]] = []
        for start in range(0, len(users), 5_000):
            got += values(
                await online(
                    client, users[start : start + 5_000], feature_refs=["user_stats:amount"]
                )
            )
        assert all(cells[0][0] == "FEATURE_STATUS_PRESENT" for cells in got)
        # The batch in flight at the kill is either complete or absent, never half.
        history = [
            chunk
            async for chunk in client.stub.GetHistoricalFeatures(
                f.GetHistoricalFeaturesRequest(
                    feature_refs=["user_stats:amount"],
                    entity_rows=[
                        f.EntityRow(entity_key=key(f"k{len(acked)}-{j}"), event_time=ts(now))
                        for j in range(20)
                    ],
                )
            )
        ]
        statuses = {cells[0][0] for ch in history for cells in values(ch)}
        assert len(statuses) == 1
    finally:
        await client.close()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)


DEFINITIONS_YAML = """
entities:
  - name: user
    join_keys: [{name: user_id, dtype: STRING}]
feature_views:
  - name: user_stats
    entities: [user]
    ttl: 1h
    features:
      - {name: amount, dtype: DOUBLE, constraints: {min: 0, not_null: true}}
      - {name: txn_count, dtype: INT64}
      - {name: country, dtype: STRING, constraints: {allowed_values: [DE, FR, US]}}
feature_services:
  - name: fraud
    feature_refs: ["user_stats:amount"]
    transforms:
      - {output: amount_z, standard_scale: {input: "user_stats:amount", mean: 10, std: 2}}
"""


async def test_cli_applies_yaml_and_exports_point_in_time_csv(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    from mlbackend_cli import features_cmd

    server = await start_service("features")
    client: FeatureStoreClient = connect("features", server)
    definitions_file = tmp_path / "features.yaml"
    definitions_file.write_text(DEFINITIONS_YAML)
    argv = ["features", "apply", str(definitions_file), "--target", server.address]
    assert await asyncio.to_thread(features_cmd.main, argv) == 0
    view = (
        await client.stub.GetFeatureView(f.GetFeatureViewRequest(name="user_stats"))
    ).feature_view
    assert (
        view.ttl.seconds == 3600
        and view.features[2].constraints.allowed_values[0].string_value == "DE"
    )
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", T0, 12.0, 1, "DE")])), timeout=10
    )
    entities = tmp_path / "entities.csv"
    entities.write_text("user_id,event_time\nu1,2026-01-01T00:30:00Z\nu2,2026-01-01T00:30:00Z\n")
    out = tmp_path / "out.csv"
    argv = ["features", "export", str(entities), "--out", str(out), "--feature-service", "fraud",
            "--target", server.address]  # fmt: skip
    assert await asyncio.to_thread(features_cmd.main, argv) == 0
    assert out.read_text().splitlines() == ["row,user_stats:amount,amount_z", "0,12.0,1.0", "1,,"]


async def test_cli_materializes_incrementally_with_progress(
    start_service: StartService, connect: Connect, capfd: pytest.CaptureFixture[str]
) -> None:
    from mlbackend_cli import features_cmd

    server, client = await ready(start_service, connect)
    now = datetime.now(UTC)
    rows = [row(f"u{i}", now - timedelta(seconds=i), float(i), i, "DE") for i in range(1, 41)]
    await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=batch(rows)), timeout=10)
    argv = ["features", "materialize", "user_stats", "--target", server.address]
    assert await asyncio.to_thread(features_cmd.main, argv) == 0
    first = capfd.readouterr().err
    assert "40/40" in first and "user_stats: 40 entities copied" in first
    # Incremental: the next run starts where this one ended, so nothing is left to copy.
    assert await asyncio.to_thread(features_cmd.main, argv) == 0
    assert "user_stats: 0 entities copied" in capfd.readouterr().err
    # An explicit range copies again; a bad view or time is a clear error, not a traceback.
    since = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    argv = ["features", "materialize", "user_stats", "--start", since, "--target", server.address]
    assert await asyncio.to_thread(features_cmd.main, argv) == 0
    assert "user_stats: 40 entities copied" in capfd.readouterr().err
    argv = ["features", "materialize", "nope", "--target", server.address]
    assert await asyncio.to_thread(features_cmd.main, argv) == 1
    assert "mlbackend features materialize:" in capfd.readouterr().err
    with pytest.raises(SystemExit):
        features_cmd.main(["features", "materialize", "--start", "yesterday"])
    assert "ISO 8601" in capfd.readouterr().err


async def test_redis_online_store_answers_like_sqlite(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    from contract.redis_server import redis_server

    now = datetime.now(UTC)
    rows = [
        row("u1", now - timedelta(minutes=5), 12.0, 3, "DE"),
        row("u2", now - timedelta(hours=2), 7.0, 1, "US"),
        row("u1", now - timedelta(hours=1), 99.0, 9, "FR"),
    ]
    request = {"feature_refs": ["user_stats:country", "user_stats:amount"]}
    answers = []
    with redis_server() as url:
        for settings in ({}, {"online_store": "redis", "redis_url": url}):
            _, client = await ready(
                start_service, connect, data_dir=tmp_path / str(len(answers)), **settings
            )
            await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=batch(rows)), timeout=10)
            answers.append(values(await online(client, ["u3", "u2", "u1"], **request)))
    assert answers[0] == answers[1]
    assert answers[1][2] == [("FEATURE_STATUS_PRESENT", "DE"), ("FEATURE_STATUS_PRESENT", 12.0)]


ALL_TYPES_YAML = """
entities:
  - name: user
    join_keys: [{name: user_id, dtype: STRING}]
feature_views:
  - name: profile
    entities: [user]
    ttl: 1h
    features:
      - {name: amount, dtype: DOUBLE, constraints: {nan_policy: ALLOW}}
      - {name: visits, dtype: INT64}
      - {name: country, dtype: STRING}
      - {name: verified, dtype: BOOL}
      - {name: last_login, dtype: TIMESTAMP}
"""


async def test_cli_exports_typed_parquet_equal_to_the_grpc_answer(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlbackend_cli import features_cmd

    server = await start_service("features")
    client: FeatureStoreClient = connect("features", server)
    definitions_file = tmp_path / "features.yaml"
    definitions_file.write_text(ALL_TYPES_YAML)
    target = ["--target", server.address]
    argv = ["features", "apply", str(definitions_file), *target]
    assert await asyncio.to_thread(features_cmd.main, argv) == 0
    login = ts(T0 - timedelta(days=3, microseconds=7))
    names = ["amount", "visits", "country", "verified", "last_login"]
    full = [
        c.Value(double_value=float("nan")),
        c.Value(int64_value=-(2**62)),
        c.Value(string_value="Zürich"),
        c.Value(bool_value=False),
        c.Value(timestamp_value=login),
    ]
    sparse = [c.Value(double_value=2.5), c.Value(), c.Value(), c.Value(bool_value=True), c.Value()]
    rows = [
        f.FeatureRow(entity_key=key("u1"), event_time=ts(T0), values=full),
        f.FeatureRow(entity_key=key("u2"), event_time=ts(T0), values=sparse),
    ]
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(
            batch=f.FeatureBatch(feature_view="profile", features=names, rows=rows)
        ),
        timeout=10,
    )
    entities = tmp_path / "entities.csv"
    times = [
        "2026-01-01T00:30:00Z",
        "2026-01-01T00:30:00Z",
        "2026-01-01T00:30:00Z",
        "2026-01-01T05:00:00Z",
    ]
    entities.write_text(
        "user_id,event_time\n"
        + "".join(f"{u},{t}\n" for u, t in zip(["u1", "u2", "u3", "u1"], times, strict=True))
    )
    refs = ",".join(f"profile:{n}" for n in names)
    outputs = {}
    for out, extra in (
        (tmp_path / "out.parquet", []),
        (tmp_path / "out.data", ["--format", "parquet"]),
        (tmp_path / "out.csv", []),
    ):
        argv = [
            "features",
            "export",
            str(entities),
            "--output",
            str(out),
            "--feature-refs",
            refs,
            *extra,
            *target,
        ]
        assert await asyncio.to_thread(features_cmd.main, argv) == 0
        outputs[out.suffix] = out
    assert outputs[".csv"].read_text().splitlines()[0] == "row," + refs
    table = pq.read_table(outputs[".parquet"])
    other = pq.read_table(outputs[".data"])  # NaN != NaN: compare the reprs
    assert other.schema == table.schema and repr(other.to_pylist()) == repr(table.to_pylist())
    assert table.schema.names == ["row", *refs.split(",")]
    assert table.schema.types == [
        pa.int64(),
        pa.float64(),
        pa.int64(),
        pa.string(),
        pa.bool_(),
        pa.timestamp("us", tz="UTC"),
    ]
    # The gRPC answer, cell by cell: the same values, nulls where it has none.
    entity_rows = []
    for user, when in zip(["u1", "u2", "u3", "u1"], times, strict=True):
        row = f.EntityRow(entity_key=key(user))
        row.event_time.FromJsonString(when)
        entity_rows.append(row)
    request = f.GetHistoricalFeaturesRequest(feature_refs=refs.split(","), entity_rows=entity_rows)
    grpc_rows = [
        r
        for ch in await _collect(client.stub.GetHistoricalFeatures(request, timeout=10))
        for r in ch.rows
    ]
    exported = table.to_pylist()
    assert [r["row"] for r in exported] == [0, 1, 2, 3]
    for got, want in zip(exported, grpc_rows, strict=True):
        for ref, cell in zip(refs.split(","), want.values, strict=True):
            kind = cell.value.WhichOneof("kind")
            if kind is None or kind == "null_value":
                assert got[ref] is None, ref
            elif kind == "timestamp_value":
                assert got[ref] == cell.value.timestamp_value.ToDatetime(tzinfo=UTC)
            elif kind == "double_value" and cell.value.double_value != cell.value.double_value:
                assert got[ref] != got[ref]  # NaN stays NaN
            else:
                assert got[ref] == getattr(cell.value, kind) and type(got[ref]) is type(
                    getattr(cell.value, kind)
                ), ref
    assert exported[0]["profile:country"] == "Zürich" and exported[0]["profile:visits"] == -(2**62)
    assert exported[1]["profile:visits"] is None and exported[1]["profile:verified"] is True
    assert exported[2]["profile:amount"] is None  # never seen
    assert exported[3]["profile:amount"] is None  # expired
    assert exported[0]["profile:last_login"] == (T0 - timedelta(days=3, microseconds=7))


async def _collect(stream: Any) -> list[Any]:
    return [item async for item in stream]


async def test_cli_applies_a_python_definitions_module(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    from mlbackend_cli import features_cmd

    server = await start_service("features")
    client: FeatureStoreClient = connect("features", server)
    (tmp_path / "defs.py").write_text(
        "from mlbackend_clients.feature_definitions import (\n"
        "    Entity, Feature, FeatureService, FeatureView, JoinKey, StandardScale)\n"
        "user = Entity('user', [JoinKey('user_id', 'STRING')])\n"
        "stats = FeatureView('user_stats', entities=[user], ttl='1h',\n"
        "                    features=[Feature('amount', 'DOUBLE')])\n"
        "fraud = FeatureService('fraud', feature_refs=[stats.ref('amount')],\n"
        "    transforms=[StandardScale('amount_z', stats.ref('amount'), mean=10, std=2)])\n"
    )
    argv = ["features", "apply", str(tmp_path / "defs.py"), "--target", server.address]
    assert await asyncio.to_thread(features_cmd.main, argv) == 0
    view = (
        await client.stub.GetFeatureView(f.GetFeatureViewRequest(name="user_stats"))
    ).feature_view
    assert view.ttl.seconds == 3600 and view.features[0].dtype == c.DATA_TYPE_DOUBLE
    service = (
        await client.stub.GetFeatureService(f.GetFeatureServiceRequest(name="fraud"))
    ).feature_service
    assert [s.name for s in service.output_schema] == ["user_stats:amount", "amount_z"]


async def test_difference_and_epoch_seconds_online_and_historically(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    service = f.FeatureService(
        name="ages",
        feature_refs=["user_stats:amount"],
        request_inputs=[
            f.RequestInput(name="tx_amount", dtype=c.DATA_TYPE_DOUBLE),
            f.RequestInput(name="at", dtype=c.DATA_TYPE_TIMESTAMP),
            f.RequestInput(name="signup", dtype=c.DATA_TYPE_TIMESTAMP),
        ],
        transforms=[
            f.Transform(
                output="over",
                difference=f.Transform.Difference(left="tx_amount", right="user_stats:amount"),
            ),
            f.Transform(output="at_s", epoch_seconds=f.Transform.EpochSeconds(input="at")),
            f.Transform(
                output="age_s", difference=f.Transform.Difference(left="at", right="signup")
            ),
        ],
        outputs=["over", "at_s", "age_s"],
    )
    await client.stub.ApplyDefinitions(f.ApplyDefinitionsRequest(feature_services=[service]))
    now = datetime.now(UTC).replace(microsecond=500)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", now - timedelta(minutes=1), 14.0, 3, "FR")])),
        timeout=10,
    )
    inputs = c.FeatureMap(
        values={
            "tx_amount": c.Value(double_value=20.0),
            "at": c.Value(timestamp_value=ts(now)),
            "signup": c.Value(timestamp_value=ts(now - timedelta(days=2, microseconds=250))),
        }
    )
    answer = await online(client, ["u1", "u2"], feature_service="ages", request_inputs=[inputs] * 2)
    expected = [6.0, now.timestamp(), 2 * 86_400 + 0.00025]
    assert [v for _, v in values(answer)[0]] == expected
    assert values(answer)[1][0] == ("FEATURE_STATUS_NOT_FOUND", None)
    rows = [
        f.EntityRow(entity_key=key(u), event_time=ts(now), request_inputs=inputs)
        for u in ("u1", "u2")
    ]
    chunks = [
        ch
        async for ch in client.stub.GetHistoricalFeatures(
            f.GetHistoricalFeaturesRequest(feature_service="ages", entity_rows=rows), timeout=10
        )
    ]
    assert [cells for ch in chunks for cells in values(ch)] == values(answer)


def _entity_table(users: list[str], times: list[datetime], **inputs: list[Any]) -> bytes:
    columns: dict[str, Any] = {
        "user_id": pa.array(users),
        "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        **{name: pa.array(values) for name, values in inputs.items()},
    }
    return arrow_stream(pa.table(columns))


def _arrow_rows(chunks: list[Any]) -> list[list[tuple[str, Any]]]:
    """Arrow chunks in the shape ``values`` gives row messages: (status name, value)."""
    names = [s.name for s in chunks[0].schema]
    out = []
    for chunk in chunks:
        assert not chunk.rows
        columns = pa.ipc.open_stream(chunk.arrow).read_all().to_pydict()
        for i in range(len(columns[names[0]])):
            out.append(
                [("FEATURE_STATUS_" + columns[n + "__status"][i], columns[n][i]) for n in names]
            )
    return out


async def test_arrow_tables_in_and_out_give_the_rows_answer(
    start_service: StartService, connect: Connect
) -> None:
    _, client = await ready(start_service, connect)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(
            batch=batch(
                [
                    row("u1", T0, 1.0, 1, "DE"),
                    row("u1", T0 + timedelta(minutes=30), 2.0, 2, "FR"),
                    f.FeatureRow(
                        entity_key=key("u2"), event_time=ts(T0),
                        values=[c.Value(double_value=5.0), c.Value(), c.Value(string_value="US")],
                    ),
                ]
            )
        ),
        timeout=10,
    )  # fmt: skip
    users = ["u1", "u1", "u1", "u2", "u9"] * 3
    times = [T0 - timedelta(seconds=1), T0 + timedelta(minutes=31), T0 + timedelta(hours=2), T0,
             T0] * 3  # fmt: skip
    refs = ["user_stats:amount", "user_stats:txn_count", "user_stats:country"]

    async def read(**kw: Any) -> list[Any]:
        request = f.GetHistoricalFeaturesRequest(chunk_size=4, **kw)
        return [ch async for ch in client.stub.GetHistoricalFeatures(request, timeout=10)]

    entity_rows = [
        f.EntityRow(entity_key=key(u), event_time=ts(t)) for u, t in zip(users, times, strict=True)
    ]
    by_rows = await read(feature_refs=refs, entity_rows=entity_rows)
    by_arrow = await read(
        feature_refs=refs,
        entity_table=_entity_table(users, times),
        result_format=f.RESULT_FORMAT_ARROW,
    )
    assert [ch.start_row_index for ch in by_arrow] == [0, 4, 8, 12]
    assert list(by_arrow[0].schema) == list(by_rows[0].schema) and not by_arrow[1].schema
    expected = [cells for ch in by_rows for cells in values(ch)]
    assert _arrow_rows(by_arrow) == expected
    assert expected[:5] == [
        [("FEATURE_STATUS_NOT_FOUND", None)] * 3,
        [("FEATURE_STATUS_PRESENT", 2.0), ("FEATURE_STATUS_PRESENT", 2),
         ("FEATURE_STATUS_PRESENT", "FR")],
        [("FEATURE_STATUS_EXPIRED", None)] * 3,
        [("FEATURE_STATUS_PRESENT", 5.0), ("FEATURE_STATUS_NULL_VALUE", None),
         ("FEATURE_STATUS_PRESENT", "US")],
        [("FEATURE_STATUS_NOT_FOUND", None)] * 3,
    ]  # fmt: skip
    table = pa.ipc.open_stream(by_arrow[0].arrow).read_all()
    assert table.column("user_stats:amount__event_time").to_pylist()[1] == T0 + timedelta(
        minutes=30
    )

    # A feature service's request inputs are the table's columns of those names.
    now = datetime.now(UTC)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", now - timedelta(minutes=1), 14.0, 3, "FR")])),
        timeout=10,
    )
    service = await read(
        feature_service="fraud",
        entity_table=_entity_table(["u1", "u9"], [now, now], tx_amount=[7.0, 1.0]),
        result_format=f.RESULT_FORMAT_ARROW,
    )
    assert service[0].feature_service == "fraud@1"
    got = _arrow_rows(service)
    assert [v for _, v in got[0]] == [2.0, 0.5, 0.0, 1.0, 0.0]
    assert got[0][1][0] == "FEATURE_STATUS_COMPUTED"
    assert got[1][0] == ("FEATURE_STATUS_NOT_FOUND", None)

    # The client's data-frame call: one table, the resolved service in its metadata.
    entities = pa.table(
        {"user_id": ["u1", "u9"], "event_timestamp": pa.array([now, now]), "tx_amount": [7.0, 1.0]}
    )
    table = await client.historical_table(entities, feature_service="fraud", chunk_size=1)
    assert table.num_rows == 2 and table.schema.metadata == {FEATURE_SERVICE_KEY: b"fraud@1"}
    assert table.column("amount_z").to_pylist() == [2.0, None]
    assert table.column("amount_z__status").to_pylist() == ["COMPUTED", "NOT_FOUND"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"entity_table": b"\x00not arrow"}, "entity_table"),
        ({"entity_table": _entity_table(["u1"], [T0], typo=[1])}, "entity_table[0].join_keys.typo"),
        ({"entity_table": _entity_table(["u1"], [T0]), "result_format": 7}, "result_format"),
    ],
)
async def test_a_bad_entity_table_is_invalid_argument_with_the_field(
    start_service: StartService, connect: Connect, extra: dict[str, Any], field: str
) -> None:
    _, client = await ready(start_service, connect)
    request = f.GetHistoricalFeaturesRequest(feature_refs=["user_stats:amount"], **extra)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in client.stub.GetHistoricalFeatures(request, timeout=10):
            pass
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [name for name, _ in violations(raised.value)] == [field]
