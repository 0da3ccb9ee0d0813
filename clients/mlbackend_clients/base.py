"""What every typed client shares: a channel, the health service, closing."""

from __future__ import annotations

from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbackend_clients.channel import ChannelOptions, create_channel

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]

StubT = TypeVar("StubT")


class ServiceClient(Generic[StubT]):
    """Base of the per-service clients: ``SERVICE`` is the service's descriptor, ``STUB``
    its generated stub class, available as ``client.stub`` (typed as the asyncio stub
    that mypy-protobuf declares, so awaited calls type-check)."""

    SERVICE: ClassVar[ServiceDescriptor]
    STUB: ClassVar[type[Any]]

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.stub: StubT = self.STUB(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    @classmethod
    def connect(cls, target: str, options: ChannelOptions | None = None) -> Self:
        """A client on a new channel to ``target`` (``host:port``, a list, ``dns:///…``)."""
        return cls(create_channel(target, (cls.SERVICE, HEALTH), options))

    async def check_health(self, *, timeout: float | None = None) -> str:
        """The server's health status for this service: ``SERVING``, ``NOT_SERVING``…"""
        response = await self._health.Check(
            health_pb2.HealthCheckRequest(service=self.SERVICE.full_name), timeout=timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
