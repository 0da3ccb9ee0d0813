"""The channel factory against a scripted server: retries only where the contract says
a call is idempotent, default deadlines, the bearer token on every call, and the same
rules applied per call on a channel without interceptors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from mlbackend.registry.v1 import registry_pb2
from mlbackend_clients import propagation
from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.registry import RegistryClient

SERVICE = "mlbackend.registry.v1.ModelRegistryService"


class Flaky:
    """Answers UNAVAILABLE ``failures`` times per method, then succeeds (or sleeps)."""

    def __init__(self, failures: int, sleep: float = 0.0) -> None:
        self.failures = failures
        self.sleep = sleep
        self.attempts: dict[str, int] = {}
        self.tokens: list[str | bytes | None] = []
        self.metadata: list[dict[str, str | bytes]] = []
        self.remaining: list[float | None] = []

    def handler(self, method: str, response: Any) -> grpc.RpcMethodHandler[Any, Any]:
        async def behaviour(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.attempts[method] = self.attempts.get(method, 0) + 1
            metadata = dict(context.invocation_metadata() or ())
            self.tokens.append(metadata.get("authorization"))
            self.metadata.append(metadata)
            self.remaining.append(context.time_remaining())
            if self.attempts[method] <= self.failures:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            await asyncio.sleep(self.sleep)
            return response

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=lambda b: b,
            response_serializer=lambda m: m.SerializeToString(),
        )


@pytest.fixture
async def flaky_server() -> AsyncIterator[tuple[Flaky, str]]:
    flaky = Flaky(failures=2)
    server = grpc.aio.server()
    handlers = {
        "GetRegisteredModel": flaky.handler(
            "GetRegisteredModel", registry_pb2.GetRegisteredModelResponse()
        ),
        "CreateRegisteredModel": flaky.handler(
            "CreateRegisteredModel", registry_pb2.CreateRegisteredModelResponse()
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield flaky, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_idempotent_reads_are_retried_on_unavailable(
    flaky_server: tuple[Flaky, str],
) -> None:
    flaky, address = flaky_server
    async with RegistryClient.connect(address, ChannelOptions(token="t" * 20)) as client:
        await client.stub.GetRegisteredModel(registry_pb2.GetRegisteredModelRequest())
    assert flaky.attempts["GetRegisteredModel"] == 3
    assert flaky.tokens == [f"Bearer {'t' * 20}"] * 3


async def test_non_idempotent_writes_are_not_retried(flaky_server: tuple[Flaky, str]) -> None:
    flaky, address = flaky_server
    async with RegistryClient.connect(address) as client:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.CreateRegisteredModel(registry_pb2.CreateRegisteredModelRequest())
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert flaky.attempts["CreateRegisteredModel"] == 1


async def test_unary_calls_get_the_default_deadline(flaky_server: tuple[Flaky, str]) -> None:
    flaky, address = flaky_server
    flaky.failures, flaky.sleep = 0, 0.0
    options = ChannelOptions(default_timeout=0.5)
    async with RegistryClient.connect(address, options) as client:
        # A fast call well inside a short default deadline succeeds…
        await client.stub.CreateRegisteredModel(registry_pb2.CreateRegisteredModelRequest())
        # …and a slow one fails when the deadline passes, not before.
        flaky.sleep = 5.0
        started = asyncio.get_running_loop().time()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.CreateRegisteredModel(registry_pb2.CreateRegisteredModelRequest())
        elapsed = asyncio.get_running_loop().time() - started
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.4 < elapsed < 3


async def _one_method_server(
    method: str, behaviour: Callable[[bytes, Any], Awaitable[Any]], port: int = 0
) -> tuple[grpc.aio.Server, int]:
    """A started server answering ``method`` of the registry service on ``port``."""
    server = grpc.aio.server()
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
        behaviour, lambda b: b, lambda m: m.SerializeToString()
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {method: handler}),)
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


async def test_round_robin_spreads_calls_over_an_address_list() -> None:
    counts = [0, 0]
    servers, ports = [], []
    for index in range(2):

        async def behaviour(request: bytes, context: Any, index: int = index) -> Any:
            counts[index] += 1
            return registry_pb2.GetRegisteredModelResponse()

        server, port = await _one_method_server("GetRegisteredModel", behaviour)
        servers.append(server)
        ports.append(port)
    try:
        target = ",".join(f"127.0.0.1:{port}" for port in ports)
        async with RegistryClient.connect(target) as client:
            for _ in range(20):
                await client.stub.GetRegisteredModel(registry_pb2.GetRegisteredModelRequest())
        assert counts[0] >= 5 and counts[1] >= 5, counts
    finally:
        for server in servers:
            await server.stop(0)


async def test_a_new_client_reaches_a_server_restarted_where_an_old_one_failed() -> None:
    """An old client left in reconnect backoff to an address does not make a new
    client to a server started again on that address fail."""

    async def behaviour(request: bytes, context: Any) -> Any:
        return registry_pb2.CreateRegisteredModelResponse()

    create = registry_pb2.CreateRegisteredModelRequest()
    first, port = await _one_method_server("CreateRegisteredModel", behaviour)
    async with RegistryClient.connect(f"127.0.0.1:{port}") as old:
        await old.stub.CreateRegisteredModel(create)
        await first.stop(0)
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # not retried: a write
            await old.stub.CreateRegisteredModel(create)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        second, _ = await _one_method_server("CreateRegisteredModel", behaviour, port)
        try:
            async with RegistryClient.connect(f"127.0.0.1:{port}") as new:
                await new.stub.CreateRegisteredModel(create)
        finally:
            await second.stop(0)


@pytest.mark.parametrize("interceptors", [True, False])
async def test_token_request_id_and_caller_deadline_with_or_without_interceptors(
    flaky_server: tuple[Flaky, str], interceptors: bool
) -> None:
    flaky, address = flaky_server
    flaky.failures = 0
    request_id = propagation.new_request_id()
    options = ChannelOptions(token="t" * 20)
    async with RegistryClient.connect(address, options, interceptors=interceptors) as client:
        method = client.method("GetRegisteredModel")
        bound = propagation.bind(propagation.CallContext(request_id, time.monotonic() + 0.8))
        try:
            timeout, metadata = client.call_options(method, 5.0)
            await client.stub.GetRegisteredModel(
                registry_pb2.GetRegisteredModelRequest(), timeout=timeout, metadata=metadata
            )
            # A caller whose deadline has passed: the call is not made at all.
            propagation.unbind(bound)
            bound = propagation.bind(propagation.CallContext(request_id, time.monotonic() - 1))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                timeout, metadata = client.call_options(method, 5.0)
                await client.stub.GetRegisteredModel(
                    registry_pb2.GetRegisteredModelRequest(), timeout=timeout, metadata=metadata
                )
        finally:
            propagation.unbind(bound)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline passed before calling" in (raised.value.details() or "")
    (seen,) = flaky.metadata
    assert seen["authorization"] == f"Bearer {'t' * 20}"
    assert str(seen["traceparent"]).startswith(f"00-{request_id}-")
    assert "x-request-id" not in seen  # the trace id says it: one header, not two
    (remaining,) = flaky.remaining
    # The caller's 0.8 s, not the 5 s default (gRPC rounds the sent timeout up a little).
    assert remaining is not None and remaining <= 0.85
