"""Serving's default front, the thread-pool ``grpc.server`` (``start_thread_server`` and
``ThreadCallInterceptor``): the runtime's promises hold there as on ``grpc.aio`` —
status mapping with details, request ids, deadlines, auth, health, reflection, metrics,
drain — through a probe service with blocking handlers, then the serving service."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from pki import pki
from prometheus_client import CollectorRegistry

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend.serving.v1 import serving_pb2
from mlbackend_clients import propagation
from mlbackend_clients.channel import ChannelOptions, TlsOptions, create_channel
from mlbackend_clients.errors import decode_error
from mlbackend_clients.serving import ServingClient
from mlbackend_runtime import errors
from mlbackend_runtime.auth import Role
from mlbackend_runtime.interceptor import caller
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_thread_server

from conftest import StartService, loopback_settings

PROBE = "mlbackend.test.ThreadProbe"
_LIMIT = 64 * 1024
TOKENS = {"reader": "reader-token-0123456789", "admin": "admin-token-01234567890"}

__all__ = ["pki"]  # the fixture, used by the TLS tests below


# Set by a call's handler: the next call on the same pool thread must not see it.
_LAST_CALL: contextvars.ContextVar[str] = contextvars.ContextVar("last_call", default="unset")


class Probe:
    def __init__(self) -> None:
        self.finished = 0
        self.release = threading.Event()

    def sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(float(request.decode()))
        self.finished += 1
        return b"slept"

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        kind = request.decode()
        if kind == "bug":
            raise KeyError("a bug, not a domain error")
        if kind == "invalid":
            raise errors.InvalidInput(
                "1 row is invalid", [errors.FieldViolation("rows[0].amount", "must be finite")]
            )
        raise errors.NotFound("model 'fraud' not found")

    def remember(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        seen = _LAST_CALL.get()
        _LAST_CALL.set(request.decode())
        return seen.encode()

    def remember_each(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        # A streamed answer's body runs while gRPC pulls it, after the handler returned.
        for part in (b"1", b"2"):
            seen = _LAST_CALL.get()
            _LAST_CALL.set(request.decode() + part.decode())
            yield seen.encode()

    def whoami(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        current = propagation.current()
        assert current is not None
        return json.dumps(
            {
                "request_id": current.request_id,
                "remaining": current.time_remaining(),
                "caller": caller().identity,
            }
        ).encode()


# Ports 0: the test's settings choose; readers may call every probe method.
READERS = {
    f"/{PROBE}/{m}": Role.READER for m in ("Sleep", "Fail", "WhoAmI", "Remember", "RememberEach")
}
SPEC = ServiceSpec("thread-probe", (), 0, 0, _LIMIT, READERS)


async def _start(probe: Probe, tmp_path: Path, **settings: Any) -> RunningServer:
    handlers = {
        "Sleep": grpc.unary_unary_rpc_method_handler(probe.sleep),
        "Fail": grpc.unary_unary_rpc_method_handler(probe.fail),
        "WhoAmI": grpc.unary_unary_rpc_method_handler(probe.whoami),
        "Remember": grpc.unary_unary_rpc_method_handler(probe.remember),
        "RememberEach": grpc.unary_stream_rpc_method_handler(probe.remember_each),
    }

    def register(server: grpc.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PROBE, handlers),))

    return await start_thread_server(
        SPEC,
        loopback_settings(tmp_path, **settings),
        register,
        registry=CollectorRegistry(),
        threads=8,
        max_concurrent_rpcs=16,
    )


@dataclass
class Running:
    probe: Probe
    server: RunningServer
    channel: grpc.aio.Channel


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """A probe on a thread-pool server, and a channel to it."""
    probe = Probe()
    server = await _start(probe, tmp_path)
    async with create_channel(server.address) as channel:
        yield Running(probe, server, channel)
    await server.stop(0)


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def test_domain_errors_map_with_details_and_request_id(running: Running) -> None:
    channel = running.channel
    fail = channel.unary_unary(f"/{PROBE}/Fail")
    error = await _error(fail(b"invalid"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    decoded = decode_error(error)
    assert [(v.field, v.description) for v in decoded.violations] == [
        ("rows[0].amount", "must be finite")
    ]
    assert decoded.request_id and len(decoded.request_id) == 32
    assert (await _error(fail(b"missing"))).code() == grpc.StatusCode.NOT_FOUND
    bug = await _error(fail(b"bug"))
    assert bug.code() == grpc.StatusCode.INTERNAL
    assert "KeyError" not in (bug.details() or "") and "request id" in (bug.details() or "")


async def test_request_id_and_deadline_reach_the_handler_and_do_not_leak(
    running: Running,
) -> None:
    channel = running.channel
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    call = channel.unary_unary(f"/{PROBE}/WhoAmI")(
        b"", metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),), timeout=5
    )
    answer = json.loads(await call)
    assert answer["request_id"] == trace_id
    assert 0 < answer["remaining"] < 5.1
    assert ("x-request-id", trace_id) in tuple(await call.trailing_metadata())
    # Pool threads are reused: every call gets its own id, none inherits the last one's.
    seen = {json.loads(await channel.unary_unary(f"/{PROBE}/WhoAmI")(b""))["request_id"]
            for _ in range(20)}  # fmt: skip
    assert len(seen) == 20 and trace_id not in seen


async def test_each_call_runs_in_a_context_of_its_own(running: Running) -> None:
    """What one call binds in ``contextvars`` (request id, principal, anything a handler
    sets) is gone for the next call its pool thread serves, streamed answers included."""
    channel = running.channel
    remember = channel.unary_unary(f"/{PROBE}/Remember")
    assert [await remember(f"call {i}".encode()) for i in range(20)] == [b"unset"] * 20
    each = channel.unary_stream(f"/{PROBE}/RememberEach")
    for i in range(10):
        # Within one stream the body keeps its context; a new stream starts clean.
        assert [m async for m in each(f"stream {i}.".encode())] == [
            b"unset",
            f"stream {i}.1".encode(),
        ]


async def test_oversized_message_is_resource_exhausted(running: Running) -> None:
    channel = running.channel
    big = await _error(channel.unary_unary(f"/{PROBE}/WhoAmI")(b"x" * (_LIMIT + 1)))
    assert big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_auth_is_enforced(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{t} {role} {role}-user\n" for role, t in TOKENS.items()))
    server = await _start(Probe(), tmp_path, token_file=tokens)
    try:
        async with create_channel(server.address) as channel:
            whoami = channel.unary_unary(f"/{PROBE}/WhoAmI")
            denied = await _error(whoami(b""))
            assert denied.code() == grpc.StatusCode.UNAUTHENTICATED
            header = (("authorization", f"Bearer {TOKENS['reader']}"),)
            assert json.loads(await whoami(b"", metadata=header))["caller"] == "reader-user"
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)


async def test_metrics_count_calls_by_code(running: Running) -> None:
    channel = running.channel
    await channel.unary_unary(f"/{PROBE}/WhoAmI")(b"")
    await _error(channel.unary_unary(f"/{PROBE}/Fail")(b"missing"))
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(running.server.metrics.url, timeout=5).read().decode()
    )
    assert 'method="WhoAmI",service="mlbackend.test.ThreadProbe"} 1.0' in text
    assert 'mlbackend_rpc_errors_total{code="NOT_FOUND"' in text


async def test_graceful_stop_drains_in_flight_calls(running: Running) -> None:
    probe, server, channel = running.probe, running.server, running.channel
    in_flight = [
        asyncio.ensure_future(channel.unary_unary(f"/{PROBE}/Sleep")(b"0.5")) for _ in range(5)
    ]
    await asyncio.sleep(0.2)
    await server.stop(grace=5)
    assert await asyncio.gather(*in_flight) == [b"slept"] * 5
    assert probe.finished == 5
    refused = await _error(channel.unary_unary(f"/{PROBE}/Sleep")(b"0", timeout=1))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE


# --- the serving service on it -----------------------------------------------------------


async def test_serving_front_auth_health_and_reflection(
    start_service: StartService, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{t} {role} {role}-user\n" for role, t in TOKENS.items()))
    server = await start_service("serving", token_file=tokens, model_dir=tmp_path / "models")
    reader = (("authorization", f"Bearer {TOKENS['reader']}"),)
    async with create_channel(server.address) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=oip.ServerLiveRequest.SerializeToString,
            response_deserializer=oip.ServerLiveResponse.FromString,
        )
        assert (await _error(live(oip.ServerLiveRequest()))).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert (await live(oip.ServerLiveRequest(), metadata=reader)).live
        unload = channel.unary_unary(
            "/mlbackend.serving.v1.ModelServingService/UnloadModel",
            request_serializer=serving_pb2.UnloadModelRequest.SerializeToString,
            response_deserializer=serving_pb2.UnloadModelResponse.FromString,
        )
        denied = await _error(unload(serving_pb2.UnloadModelRequest(model="x"), metadata=reader))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

    def reflected() -> list[str]:
        with grpc.insecure_channel(server.address) as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    listed = await asyncio.to_thread(reflected)
    assert {"inference.GRPCInferenceService", "mlbackend.serving.v1.ModelServingService"} <= set(
        listed
    )


async def _serving_health(target: str, tls: TlsOptions | None) -> str:
    """The serving service's health status, or the code the call failed with."""
    client = ServingClient.connect(target, ChannelOptions(tls=tls, max_attempts=2))
    try:
        return await client.check_health(timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    finally:
        await client.close()


async def test_serving_front_mtls_and_a_plaintext_health_port(
    start_service: StartService,
    pki: Path,
    tmp_path: Path,
) -> None:
    server = await start_service(
        "serving",
        model_dir=tmp_path / "models",
        tls_cert=pki / "server.crt",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.crt",
        health_port=0,
    )
    target = f"localhost:{server.port}"
    trusted = TlsOptions(
        ca_cert=pki / "ca.crt", client_cert=pki / "client.crt", client_key=pki / "client.key"
    )
    assert await _serving_health(target, trusted) == "SERVING"
    assert await _serving_health(target, TlsOptions(ca_cert=pki / "ca.crt")) == "UNAVAILABLE"
    assert await _serving_health(target, None) == "UNAVAILABLE"
    assert server.health_port
    assert await _serving_health(f"127.0.0.1:{server.health_port}", None) == "SERVING"
