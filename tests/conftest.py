"""Fixtures that start mlbackend services in-process on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mlbackend_cli import catalog
from mlbackend_clients.base import ServiceClient
from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.suite import CLIENT_CLASSES
from mlbackend_runtime.server import RunningServer
from mlbackend_runtime.settings import ServerSettings

StartService = Callable[..., Awaitable[RunningServer]]
Connect = Callable[..., ServiceClient[Any]]


def loopback_settings(tmp_path: Any, **overrides: Any) -> ServerSettings:
    """Settings for a test server: loopback, ephemeral ports, its own data dir."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "http_port": 0,
        "data_dir": tmp_path,
        "grace_seconds": 2.0,
    }
    values.update(overrides)
    return ServerSettings(**values)


@pytest.fixture
async def start_service(tmp_path: Any) -> AsyncIterator[StartService]:
    """``await start_service("registry", token_file=...)`` → a running server, stopped after."""
    started: list[RunningServer] = []

    async def start(name: str, **overrides: Any) -> RunningServer:
        settings = loopback_settings(tmp_path / name, **overrides)
        server = await catalog.load(name).create_server(settings, registry=CollectorRegistry())
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await _stop(server)


STOP_TIMEOUT = 20.0


async def _stop(server: RunningServer) -> None:
    """Stop a test server; one that hangs fails the test with every task's stack."""
    try:
        await asyncio.wait_for(server.stop(0), STOP_TIMEOUT)
    except TimeoutError:
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)
        raise AssertionError(f"{server.spec.name} did not stop in {STOP_TIMEOUT:.0f} s") from None


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``connect("registry", server, token=...)`` → a typed client, closed after."""
    clients: list[ServiceClient[Any]] = []

    def make(name: str, server: RunningServer, **options: Any) -> ServiceClient[Any]:
        client = CLIENT_CLASSES[name].connect(server.address, ChannelOptions(**options))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def suite(start_service: StartService, connect: Connect) -> dict[str, ServiceClient[Any]]:
    """All five services in-process, each with a connected client."""
    clients: dict[str, ServiceClient[Any]] = {}
    for name in catalog.SERVICES:
        clients[name] = connect(name, await start_service(name))
    return clients
