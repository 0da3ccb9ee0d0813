"""The gateway's reads over StreamOnlineFeatures, against a real gRPC server whose stream
misbehaves on purpose: every read is answered, by the stream while it works and by the
unary call otherwise, and a stream that fails never fails the read with it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from test_feature_store import batch, definitions, row

from mlbackend.common.v1 import common_pb2
from mlbackend.features.v1 import features_pb2 as f
from mlbackend_clients import propagation
from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.streams import StreamedMethod, StreamLimits
from mlbackend_gateway.core.model import (
    ModelVersionInfo,
    OutputInfo,
    OutputKind,
    PredictionInput,
)
from mlbackend_gateway.upstream.coalesce import CoalesceLimits
from mlbackend_gateway.upstream.features import FeatureStoreReader
from mlbackend_runtime.errors import (
    DeadlineExceeded,
    DependencyUnavailable,
    InvalidInput,
    ResourceExhausted,
)

from conftest import StartService

SERVICE = "mlbackend.features.v1.FeatureStoreService"
VERSION = ModelVersionInfo(
    model="fraud",
    version=3,
    signature=(),
    output=OutputInfo(OutputKind.CLASSIFIER, (0, 1)),
    feature_service="fraud_fs@2",
)


def _answer(request: f.GetOnlineFeaturesRequest) -> f.GetOnlineFeaturesResponse:
    response = f.GetOnlineFeaturesResponse(feature_service=request.feature_service)
    response.schema.add().name = "user_stats:n"
    for key in request.entity_keys:
        cell = response.rows.add().values.add()
        cell.value.double_value = float(len(key.join_keys["user_id"].string_value))
        cell.status = common_pb2.FEATURE_STATUS_PRESENT
    return response


@dataclass
class Store:
    """A feature store whose stream does what ``stream`` says: "ok", "hang" (never
    answers), "unavailable" (ends every stream at its first message), "refuse" (ends
    it with INVALID_ARGUMENT), "shed" / "full" (RESOURCE_EXHAUSTED: the request is shed,
    or the server keeps no more streams), or None (no stream method: UNIMPLEMENTED)."""

    stream: str | None = "ok"
    unary_calls: int = 0
    streams_opened: int = 0
    streams_ended: int = 0  # by the client closing its side
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    envelopes: list[f.StreamOnlineFeaturesRequest] = field(default_factory=list)

    async def read(self, request: f.GetOnlineFeaturesRequest, context: Any) -> Any:
        self.unary_calls += 1
        return _answer(request)

    async def read_stream(
        self, requests: AsyncIterator[f.StreamOnlineFeaturesRequest], context: Any
    ) -> AsyncIterator[f.StreamOnlineFeaturesResponse]:
        self.streams_opened += 1
        async for envelope in requests:
            self.envelopes.append(envelope)
            if self.stream == "hang":
                await asyncio.sleep(60)
            if self.stream == "unavailable":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
            if self.stream == "refuse":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no such entity")
            if self.stream in ("shed", "full"):
                reason = "OVERLOADED" if self.stream == "shed" else "STREAM_LIMIT"
                status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
                status.message = "no room"
                status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason))
                bin_status = ("grpc-status-details-bin", status.SerializeToString())
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "no room", (bin_status,))
            yield f.StreamOnlineFeaturesResponse(read=_answer(envelope.read))
        self.streams_ended += 1
        self.ended.set()

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "GetOnlineFeatures": grpc.unary_unary_rpc_method_handler(
                self.read,
                f.GetOnlineFeaturesRequest.FromString,
                f.GetOnlineFeaturesResponse.SerializeToString,
            )
        }
        if self.stream is not None:
            methods["StreamOnlineFeatures"] = grpc.stream_stream_rpc_method_handler(
                self.read_stream,
                f.StreamOnlineFeaturesRequest.FromString,
                f.StreamOnlineFeaturesResponse.SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, methods)


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    servers: list[grpc.aio.Server] = []
    clients: list[FeatureStoreClient] = []

    async def start(store: Store, *, interceptors: bool = False) -> FeatureStoreClient:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((store.handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        client = FeatureStoreClient.connect(f"127.0.0.1:{port}", interceptors=interceptors)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
    for server in servers:
        await server.stop(None)


def _reader(client: FeatureStoreClient, timeout: float = 2.0, **limits: Any) -> FeatureStoreReader:
    return FeatureStoreReader(
        client, timeout, CoalesceLimits(max_rows=1), streams=StreamLimits(**limits)
    )


async def _read(reader: FeatureStoreReader, user: str) -> float:
    table = await reader.read(VERSION, [PredictionInput({"user_id": user})], lambda i: "input")
    value = table.rows[0][0].value
    assert isinstance(value, float)
    return value


async def test_reads_go_over_streams_that_are_renewed(serve: Any) -> None:
    store = Store()
    reader = _reader(await serve(store), uses=5)
    propagation.bind(propagation.CallContext("req-7"))
    assert [await _read(reader, "u" * n) for n in range(1, 13)] == list(map(float, range(1, 13)))
    assert store.unary_calls == 0
    assert store.streams_opened == 3  # 5 messages each, then a new stream
    # Each message carries its request id and what is left of its deadline.
    assert {e.request_id for e in store.envelopes} == {"req-7"}
    assert all(0 < e.timeout.ToMilliseconds() <= 2000 for e in store.envelopes)
    # A call shared by several requests names the others, as the unary call's metadata.
    propagation.bind(propagation.CallContext("req-8", None, ("req-9", "req-10")))
    assert await _read(reader, "u") == 1.0
    assert list(store.envelopes[-1].shared_request_ids) == ["req-9", "req-10"]
    await reader.close()


async def test_an_idle_stream_is_closed(serve: Any) -> None:
    """A quiet gateway holds no stream (each holds a thread of the server)."""
    store = Store()
    reader = _reader(await serve(store), idle=0.5)
    for n in (1, 2, 3):
        assert await _read(reader, "u" * n) == n
        await asyncio.sleep(0.05)
    assert store.streams_opened == 1 and store.streams_ended == 0
    await asyncio.wait_for(store.ended.wait(), 5)
    assert store.streams_ended == 1
    assert await _read(reader, "u") == 1.0  # a new one
    assert store.streams_opened == 2
    await reader.close()


async def test_a_server_without_the_stream_is_called(serve: Any) -> None:
    store = Store(stream=None)
    reader = _reader(await serve(store))
    assert [await _read(reader, "u" * n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert store.unary_calls == 3
    await reader.close()


async def test_a_stream_ended_by_the_server_is_not_the_reads_failure(serve: Any) -> None:
    store = Store(stream="unavailable")
    reader = _reader(await serve(store))
    assert [await _read(reader, "u" * n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]
    # Each read tried a stream, which ended, then made the call.
    assert store.unary_calls == 3 and store.streams_opened == 3
    await reader.close()


async def test_a_refusal_on_the_stream_is_the_reads_answer(serve: Any) -> None:
    store = Store(stream="refuse")
    reader = _reader(await serve(store))
    with pytest.raises(InvalidInput, match="no such entity"):
        await _read(reader, "u1")
    assert store.unary_calls == 0
    await reader.close()


async def test_a_shed_request_is_refused_and_a_refused_stream_turns_to_calls(
    serve: Any,
) -> None:
    """RESOURCE_EXHAUSTED on a stream: OVERLOADED is the request's answer (the unary
    call would get it too, at twice the cost to the overloaded server) and streams stay
    in use; STREAM_LIMIT is the stream's, and calls take over for ``pause`` seconds."""
    store = Store(stream="shed")
    reader = _reader(await serve(store))
    with pytest.raises(ResourceExhausted, match="overloaded"):
        await _read(reader, "u1")
    store.stream = "ok"
    assert await _read(reader, "uu") == 2.0
    assert store.unary_calls == 0 and store.streams_opened == 2
    await reader.close()

    store = Store(stream="full")
    reader = _reader(await serve(store))
    assert [await _read(reader, "u" * n) for n in (1, 2)] == [1.0, 2.0]
    assert store.unary_calls == 2 and store.streams_opened == 1
    await reader.close()


async def test_a_stream_that_does_not_answer_ends_at_the_timeout(serve: Any) -> None:
    store = Store(stream="hang")
    reader = _reader(await serve(store), timeout=0.3)
    started = asyncio.get_running_loop().time()
    with pytest.raises(DependencyUnavailable, match="did not answer in time"):
        await _read(reader, "u1")
    assert asyncio.get_running_loop().time() - started < 1.0
    # The caller's own deadline, when it comes first, is the caller's.
    propagation.bind(propagation.CallContext("req-8", time.monotonic() + 0.1))
    with pytest.raises(DeadlineExceeded):
        await _read(reader, "u1")
    # Neither stream is used again: the next read opens a new one.
    propagation.bind(propagation.CallContext("req-9"))
    store.stream = "ok"
    assert await _read(reader, "u12") == 3.0
    assert store.streams_opened == 3
    await reader.close()


async def test_any_client_sends_its_calls_as_stream_messages(serve: Any) -> None:
    """``StreamedMethod`` on a channel with interceptors, as applications connect: the
    calls go as messages of one stream, each with the channel's default timeout, and
    answer as the unary call would, refusals included."""
    store = Store()
    client = await serve(store, interceptors=True)
    get = StreamedMethod(
        client,
        "GetOnlineFeatures",
        "StreamOnlineFeatures",
        f.StreamOnlineFeaturesRequest,
        f.StreamOnlineFeaturesResponse,
        ("read", "read"),
    )
    for user in ("u1", "u22", "u333"):
        request = f.GetOnlineFeaturesRequest(feature_service="fraud_fs@2")
        request.entity_keys.add().join_keys["user_id"].string_value = user
        response = await get(request)
        assert response.rows[0].values[0].value.double_value == len(user)
    assert store.unary_calls == 0 and store.streams_opened == 1 and get.streams_open == 1
    assert all(9_000 < e.timeout.ToMilliseconds() <= 10_000 for e in store.envelopes)
    store.stream = "refuse"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await get(f.GetOnlineFeaturesRequest(feature_service="fraud_fs@2"), timeout=2)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no such entity" in (raised.value.details() or "")
    await get.close()
    assert get.streams_open == 0


async def test_streams_carry_the_token_to_a_store_with_auth(
    start_service: StartService, tmp_path: Path
) -> None:
    """Against the real feature store with auth on: the stream is opened with the
    gateway's token (a reader's) and reads go over it; with a wrong token the read is
    refused as the unary call would be."""
    tokens = tmp_path / "tokens"
    tokens.write_text("writer-token-0123456789 writer ops\nreader-token-0123456789 reader gw\n")
    server = await start_service("features", token_file=tokens)
    writer = FeatureStoreClient.connect(
        server.address, ChannelOptions(token="writer-token-0123456789")
    )
    await writer.stub.ApplyDefinitions(definitions(), timeout=10)
    await writer.stub.WriteFeatures(
        f.WriteFeaturesRequest(batch=batch([row("u1", datetime.now(UTC), 4.0, 1, "DE")])),
        timeout=10,
    )
    version = ModelVersionInfo(
        model="fraud",
        version=1,
        signature=(),
        output=OutputInfo(OutputKind.CLASSIFIER, (0, 1)),
        feature_refs=("user_stats:amount",),
    )
    readers = []
    for token in ("reader-token-0123456789", "not-a-token-0123456789"):
        client = FeatureStoreClient.connect(
            server.address, ChannelOptions(token=token), interceptors=False
        )
        readers.append((_reader(client), client))
    (good, _), (bad, _) = readers
    for _ in range(3):
        table = await good.read(version, [PredictionInput({"user_id": "u1"})], lambda i: "input")
        assert table.rows[0][0].value == 4.0
    assert good._get.streams_open == 1  # one stream, reused
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await bad.read(version, [PredictionInput({"user_id": "u1"})], lambda i: "input")
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for reader, client in readers:
        await reader.close()
        await client.close()
    await writer.close()
