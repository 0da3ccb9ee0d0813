"""The feature store's two gRPC fronts keep the same promises: the thread-pool server
(default: online reads on their own threads, every other method bridged to the event
loop, streams both ways) and the all-``grpc.aio`` one."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_feature_store import (
    T0,
    _push,
    batch,
    definitions,
    key,
    online,
    row,
    ts,
    values,
    violations,
)

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend_clients.errors import decode_error
from mlbackend_features.transport import threaded
from mlbackend_runtime.auth import TokenStore

from conftest import Connect, StartService

FRONTS = ["threads", "asyncio"]


async def open_read_streams(client: Any, read: f.GetOnlineFeaturesRequest, count: int) -> list[Any]:
    """``count`` StreamOnlineFeatures streams, each open and answered once (``read``)."""
    streams = []
    for _ in range(count):
        call = client.stub.StreamOnlineFeatures()
        await call.write(f.StreamOnlineFeaturesRequest(read=read))
        assert len((await call.read()).read.rows) == 1
        streams.append(call)
    return streams


async def ready(start_service: StartService, connect: Connect, front: str) -> Any:
    server = await start_service("features", features_front=front)
    client = connect("features", server)
    await client.stub.ApplyDefinitions(definitions(), timeout=10)
    return server, client


@pytest.mark.parametrize("front", FRONTS)
async def test_push_stream_read_and_errors_on_either_front(
    start_service: StartService, connect: Connect, front: str
) -> None:
    _, client = await ready(start_service, connect, front)
    now = datetime.now(UTC)
    batches = [
        batch([row("u1", now, 1.0, 1, "DE")], "p1"),
        batch([row("u2", now, -1.0, 1, "DE")], "p2"),
        batch([row("u2", now, 2.0, 2, "FR")], "p3"),
    ]
    call = client.stub.PushFeatures(_push(batches), timeout=10)
    acks = [ack async for ack in call]
    assert [(a.batch_id, a.accepted) for a in acks] == [("p1", True), ("p2", False), ("p3", True)]
    # The runtime's rules hold on both: request id trailer, mapped errors with details.
    assert "x-request-id" in dict(await call.trailing_metadata())
    answer = await online(client, ["u2", "u1", "u9"], feature_refs=["user_stats:amount"])
    assert values(answer) == [
        [("FEATURE_STATUS_PRESENT", 2.0)],
        [("FEATURE_STATUS_PRESENT", 1.0)],
        [("FEATURE_STATUS_NOT_FOUND", None)],
    ]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await online(client, ["u1"], feature_refs=["user_stats:nope"])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no feature 'nope'" in (raised.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.WriteFeatures(
            f.WriteFeaturesRequest(batch=batch([row("u3", now, -5.0, 1, "DE")])), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(raised.value)] == ["batch.rows[0].values.amount"]


@pytest.mark.parametrize("front", FRONTS)
async def test_a_stream_left_early_and_a_slow_call_past_its_deadline(
    start_service: StartService, connect: Connect, front: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, client = await ready(start_service, connect, front)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", T0, 1.0, 1, "DE")])), timeout=10
    )
    rows = [
        f.EntityRow(entity_key=key("u1"), event_time=ts(T0 + timedelta(minutes=i % 50)))
        for i in range(5000)
    ]
    request = f.GetHistoricalFeaturesRequest(
        feature_refs=["user_stats:amount"], entity_rows=rows, chunk_size=100
    )
    for _ in range(3):
        call = client.stub.GetHistoricalFeatures(request, timeout=10)
        first = await call.read()
        assert first.start_row_index == 0 and len(first.rows) == 100
        call.cancel()
    # The server's threads are free again: a full stream and a read still work.
    chunks = [c async for c in client.stub.GetHistoricalFeatures(request, timeout=10)]
    assert sum(len(c.rows) for c in chunks) == 5000
    # A deadline the call cannot meet ends it with DEADLINE_EXCEEDED, not a stuck thread.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.GetHistoricalFeatures(request, timeout=0.001).read()
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    answer = await online(client, ["u1"], feature_refs=["user_stats:amount"])
    assert values(answer)[0][0][0] in ("FEATURE_STATUS_PRESENT", "FEATURE_STATUS_EXPIRED")
    # A client leaving is not a server failure: nothing is logged as an error.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_online_reads_racing_writes_never_go_back_in_time(
    start_service: StartService, connect: Connect
) -> None:
    """Reads on the front's own threads and writes on the loop, at once: every read sees
    a value at least as new as the last write acknowledged before it started."""
    _, client = await ready(start_service, connect, "threads")
    start = datetime.now(UTC) - timedelta(minutes=5)
    acknowledged = 0

    async def writer() -> None:
        nonlocal acknowledged
        for i in range(1, 60):
            when = start + timedelta(seconds=i)
            b = batch([row(f"u{j}", when, float(i), i, "DE") for j in range(20)])
            await client.stub.WriteFeatures(f.WriteFeaturesRequest(batch=b), timeout=10)
            acknowledged = i

    async def reader() -> list[tuple[int, float]]:
        seen = []
        while acknowledged < 59:
            before = acknowledged
            answer = await online(
                client, [f"u{j}" for j in range(20)], feature_refs=["user_stats:txn_count"]
            )
            counts = [cells[0][1] for cells in values(answer)]
            seen += [(before, count) for count in counts if count is not None]
            assert all(count is None or count >= before for count in counts), (before, counts)
        return seen

    readers = threaded.ONLINE_READ_THREADS + 2
    results = await asyncio.gather(writer(), *(reader() for _ in range(readers)))
    assert all(len(seen) > 0 for seen in results[1:])
    final = await online(client, ["u0", "u19"], feature_refs=["user_stats:txn_count"])
    assert values(final) == [[("FEATURE_STATUS_PRESENT", 59)], [("FEATURE_STATUS_PRESENT", 59)]]


async def test_the_thread_front_answers_undecodable_online_reads_as_invalid(
    start_service: StartService, connect: Connect
) -> None:
    """GetOnlineFeatures reaches the thread front as bytes (the usual request is parsed
    in C, see ``transport/threaded.py``): bytes no parser takes are the caller's error,
    as for every method whose request gRPC parses."""
    server, client = await ready(start_service, connect, "threads")
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/mlbackend.features.v1.FeatureStoreService/GetOnlineFeatures")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"\x1a\x05ab", timeout=10)  # a length past the end
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid GetOnlineFeaturesRequest" in (raised.value.details() or "")
    assert [field for field, _ in violations(raised.value)] == ["request"]
    # Well-formed and parsed in C, but ints for the string join key: the column read
    # steps aside and the general path reports it, field by field.
    wrong = c.EntityKey(join_keys={"user_id": c.Value(int64_value=7)})
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await client.stub.GetOnlineFeatures(
            f.GetOnlineFeaturesRequest(
                feature_refs=["user_stats:amount"], entity_keys=[wrong, wrong]
            ),
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(raised.value)] == [
        "entity_keys[0].join_keys.user_id",
        "entity_keys[1].join_keys.user_id",
    ]


@pytest.mark.parametrize("front", FRONTS)
async def test_online_reads_over_one_stream_answer_as_calls_do(
    start_service: StartService,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    front: str,
) -> None:
    """StreamOnlineFeatures: each message is a read, answered in order exactly as
    GetOnlineFeatures answers it; the first refused read ends the stream with the
    unary call's status and details, logged under its request id and the requests it
    was shared with; a read past its deadline is refused."""
    server, client = await ready(start_service, connect, front)
    now = datetime.now(UTC)
    await client.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", now, 1.0, 1, "DE")])), timeout=10
    )
    reads = [
        f.GetOnlineFeaturesRequest(entity_keys=[key(u)], feature_refs=["user_stats:amount"])
        for u in ("u1", "u9", "u1")
    ]
    reads.append(
        f.GetOnlineFeaturesRequest(
            entity_keys=[key("u9"), key("u1")],
            feature_refs=["user_stats:amount", "user_stats:country"],
        )
    )
    call = client.stub.StreamOnlineFeatures()
    for i, read in enumerate(reads):
        await call.write(f.StreamOnlineFeaturesRequest(read=read, request_id=f"read-{i}"))
        answer = await call.read()
        assert answer.read == await client.stub.GetOnlineFeatures(read, timeout=10)
    # Refused as the unary read is, and the stream ends with it.
    bad = f.GetOnlineFeaturesRequest(entity_keys=[key("u1")], feature_refs=["user_stats:nope"])
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await client.stub.GetOnlineFeatures(bad, timeout=10)

    def logged() -> bool:
        return any(
            "StreamOnlineFeatures -> INVALID_ARGUMENT" in r.getMessage()
            and "(shared with requests read-7, read-8)" in r.getMessage()
            for r in caplog.records
        )

    # Capturing before the write: the server may log the refusal before the read below.
    with caplog.at_level(logging.INFO, logger="mlbackend.rpc"):
        await call.write(
            f.StreamOnlineFeaturesRequest(
                read=bad, request_id="bad-read", shared_request_ids=["read-7", "bad id", "read-8"]
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await call.read()
        for _ in range(100):  # the server logs just after it sends the status
            if logged():
                break
            await asyncio.sleep(0.02)
    assert streamed.value.code() == unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert streamed.value.details() == unary.value.details()
    assert violations(streamed.value) == violations(unary.value) != []
    # The stream's status names the refused read's request id, as the unary call's would.
    assert dict(streamed.value.trailing_metadata() or ())["x-request-id"] == "bad-read"
    assert logged()
    # A deadline that passed before the read arrived.
    late = client.stub.StreamOnlineFeatures()
    message = f.StreamOnlineFeaturesRequest(read=reads[0])
    message.timeout.FromMilliseconds(0)
    await late.write(message)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await late.read()
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A client closing its side ends the stream cleanly.
    done = client.stub.StreamOnlineFeatures()
    await done.write(f.StreamOnlineFeaturesRequest(read=reads[0]))
    assert len((await done.read()).read.rows) == 1
    await done.done_writing()
    assert await done.read() is grpc.aio.EOF
    assert await done.code() == grpc.StatusCode.OK
    # Each read on a stream counts as a GetOnlineFeatures call in the RPC metrics: 4 + 1
    # answered on streams and 4 unary (the comparisons), 1 refused each way, 1 late.
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(server.metrics.url, timeout=5).read().decode()
    )
    counted = {
        line.split("code=", 1)[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlbackend_rpc_requests_total{") and 'method="GetOnlineFeatures"' in line
    }
    assert counted == {"OK": 9.0, "INVALID_ARGUMENT": 2.0, "DEADLINE_EXCEEDED": 1.0}


async def test_the_thread_front_keeps_a_bounded_number_of_read_streams(
    start_service: StartService, connect: Connect
) -> None:
    """Each open stream holds a front thread: past the limit (``--stream-slots``) a new
    one is refused with RESOURCE_EXHAUSTED, unary reads still work, and a closed stream
    frees its slot."""
    server = await start_service("features", features_front="threads", stream_slots=3)
    client = connect("features", server)
    await client.stub.ApplyDefinitions(definitions(), timeout=10)
    read = f.GetOnlineFeaturesRequest(entity_keys=[key("u1")], feature_refs=["user_stats:amount"])
    message = f.StreamOnlineFeaturesRequest(read=read)
    streams = await open_read_streams(client, read, 3)
    extra = client.stub.StreamOnlineFeatures()
    await extra.write(message)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await extra.read()
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == (
        "3 StreamOnlineFeatures streams are open, the most this server keeps; "
        "make unary calls instead"
    )
    assert decode_error(raised.value).reason == "STREAM_LIMIT"  # not a shed request
    assert len((await client.stub.GetOnlineFeatures(read, timeout=10)).rows) == 1
    await streams[0].done_writing()
    assert await streams[0].read() is grpc.aio.EOF
    again = client.stub.StreamOnlineFeatures()
    await again.write(message)
    assert len((await again.read()).read.rows) == 1
    for call in [*streams[1:], again]:
        call.cancel()


async def test_open_streams_leave_room_for_unary_calls(
    start_service: StartService, connect: Connect
) -> None:
    """The front's limit of calls in progress counts the stream slots on top: streams
    kept open up to ``--stream-slots`` never take the room unary calls have (here a
    limit of 2 calls besides 2 streams)."""
    server = await start_service(
        "features", features_front="threads", stream_slots=2, max_concurrent_rpcs=2
    )
    client = connect("features", server)
    await client.stub.ApplyDefinitions(definitions(), timeout=10)
    read = f.GetOnlineFeaturesRequest(entity_keys=[key("u1")], feature_refs=["user_stats:amount"])
    streams = await open_read_streams(client, read, 2)
    answers = await asyncio.gather(
        *(client.stub.GetOnlineFeatures(read, timeout=10) for _ in range(2))
    )
    assert [len(a.rows) for a in answers] == [1, 1]
    for call in streams:
        call.cancel()


@pytest.mark.parametrize("front", FRONTS)
async def test_a_stopping_store_ends_the_streams_callers_keep_open(
    start_service: StartService, connect: Connect, caplog: pytest.LogCaptureFixture, front: str
) -> None:
    """A caller may keep a read stream open and idle for as long as it likes; a server
    that stops ends such streams at once instead of waiting out its grace period for
    them, and says nothing about it at ERROR."""
    server, client = await ready(start_service, connect, front)
    read = f.GetOnlineFeaturesRequest(entity_keys=[key("u1")], feature_refs=["user_stats:amount"])
    streams = await open_read_streams(client, read, 3)
    started = time.monotonic()
    await server.stop(10)
    assert time.monotonic() - started < 3
    for call in streams:
        # Cancelled while idle, or ended (OK) just after its answer, if the server had
        # not yet marked it idle when the drain began.
        assert await call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("front", FRONTS)
async def test_a_token_revoked_while_its_stream_is_open_stops_working_on_it(
    start_service: StartService,
    connect: Connect,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    front: str,
) -> None:
    """Each message of a stream is authorized as its own call would be: once the token
    file no longer has the token the stream was opened with, the next message ends the
    stream with UNAUTHENTICATED, as a new call with that token gets."""
    monkeypatch.setattr(TokenStore, "RECHECK_SECONDS", 0.0)
    tokens = tmp_path / "tokens"
    writer, reader = "writer-token-0123456789", "reader-token-0123456789"
    tokens.write_text(f"{writer} writer ops\n{reader} reader gw\n")
    server = await start_service("features", features_front=front, token_file=tokens)
    admin = connect("features", server, token=writer)
    await admin.stub.ApplyDefinitions(definitions(), timeout=10)
    await admin.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", datetime.now(UTC), 4.0, 1, "DE")])),
        timeout=10,
    )
    client = connect("features", server, token=reader)
    read = f.GetOnlineFeaturesRequest(entity_keys=[key("u1")], feature_refs=["user_stats:amount"])
    call = client.stub.StreamOnlineFeatures()
    for _ in range(2):
        await call.write(f.StreamOnlineFeaturesRequest(read=read))
        assert (await call.read()).read.rows[0].values[0].value.double_value == 4.0
    tokens.write_text(f"{writer} writer ops\n")
    os.utime(tokens, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    await call.write(f.StreamOnlineFeaturesRequest(read=read, request_id="after"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await client.stub.GetOnlineFeatures(read, timeout=10)
    assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == unary.value.details()
    # The writer's token still works, on a stream as in a call.
    stream = admin.stub.StreamOnlineFeatures()
    await stream.write(f.StreamOnlineFeaturesRequest(read=read))
    assert len((await stream.read()).read.rows) == 1
    await stream.done_writing()
