"""The channel factory against a scripted server: retries only where the contract says
a call is idempotent, default deadlines, and the bearer token on every call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mlbackend.registry.v1 import registry_pb2
from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.registry import RegistryClient

SERVICE = "mlbackend.registry.v1.ModelRegistryService"


class Flaky:
    """Answers UNAVAILABLE ``failures`` times per method, then succeeds (or sleeps)."""

    def __init__(self, failures: int, sleep: float = 0.0) -> None:
        self.failures = failures
        self.sleep = sleep
        self.attempts: dict[str, int] = {}
        self.tokens: list[str | None] = []

    def handler(self, method: str, response: Any) -> grpc.RpcMethodHandler[Any, Any]:
        async def behaviour(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self.attempts[method] = self.attempts.get(method, 0) + 1
            self.tokens.append(dict(context.invocation_metadata() or ()).get("authorization"))
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


async def test_round_robin_spreads_calls_over_an_address_list() -> None:
    counts = [0, 0]
    servers, ports = [], []
    for index in range(2):

        async def behaviour(request: bytes, context: Any, index: int = index) -> Any:
            counts[index] += 1
            return registry_pb2.GetRegisteredModelResponse()

        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            behaviour, lambda b: b, lambda m: m.SerializeToString()
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"GetRegisteredModel": handler}),)
        )
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    try:
        target = ",".join(f"127.0.0.1:{port}" for port in ports)
        async with RegistryClient.connect(target) as client:
            for _ in range(20):
                await client.stub.GetRegisteredModel(registry_pb2.GetRegisteredModelRequest())
        assert counts[0] >= 5 and counts[1] >= 5, counts
    finally:
        for server in servers:
            await server.stop(0)
