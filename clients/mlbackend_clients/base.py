"""What every typed client shares: a channel, the health service, closing."""

from __future__ import annotations

from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbackend_clients.channel import ChannelOptions, Outgoing, create_channel

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
_HEALTH_CHECK = f"/{HEALTH.full_name}/Check"

StubT = TypeVar("StubT")


class ServiceClient(Generic[StubT]):
    """Base of the per-service clients: ``SERVICE`` is the service's descriptor, ``STUB``
    its generated stub class, available as ``client.stub`` (typed as the asyncio stub
    that mypy-protobuf declares, so awaited calls type-check)."""

    SERVICE: ClassVar[ServiceDescriptor]
    STUB: ClassVar[type[Any]]

    def __init__(
        self,
        channel: grpc.aio.Channel,
        outgoing: Outgoing | None = None,
        *,
        rules: Outgoing | None = None,
    ) -> None:
        self.channel = channel
        self.stub: StubT = self.STUB(channel)
        self.outgoing = outgoing
        """Set when ``channel`` has no interceptors: calls on ``stub`` then take their
        ``timeout`` and ``metadata`` from :meth:`call_options`."""
        # The channel's rules, for :meth:`call_timeout` whether or not it applies them.
        self._rules = outgoing or rules or Outgoing()
        self._health = health_pb2_grpc.HealthStub(channel)

    @classmethod
    def connect(
        cls, target: str, options: ChannelOptions | None = None, *, interceptors: bool = True
    ) -> Self:
        """A client on a new channel to ``target`` (``host:port``, a list, ``dns:///…``).

        ``interceptors=False``: the channel adds nothing to calls; each call passes
        ``timeout, metadata = client.call_options(...)`` instead, which spares grpc.aio's
        interceptor task per call (for hot paths). Only calls made that way get the
        token, request id and deadline: the client's own helper methods do not.
        """
        channel = create_channel(target, (cls.SERVICE, HEALTH), options, interceptors=interceptors)
        rules = Outgoing.from_options(options)
        return cls(channel, None if interceptors else rules, rules=rules)

    def method(self, name: str) -> str:
        """The full path of method ``name`` of this service (``/package.Service/Name``)."""
        return f"/{self.SERVICE.full_name}/{self.SERVICE.methods_by_name[name].name}"

    def call_options(
        self, method: str, timeout: float | None = None
    ) -> tuple[float | None, grpc.aio.Metadata | None]:
        """``timeout`` and ``metadata`` for a call to ``method`` (full path): the channel
        rules applied here when the channel has no interceptors, else ``timeout`` as is."""
        if self.outgoing is None:
            return timeout, None
        return self.outgoing.prepare(method, timeout)

    def call_timeout(self, method: str, timeout: float | None = None) -> float | None:
        """The timeout a call to ``method`` gets under the channel's rules (its default
        timeout, capped by the deadline of the call being served), without building
        metadata: how long a stream message carrying that call's request may take."""
        return self._rules.timeout(method, timeout)

    async def check_health(self, *, timeout: float | None = None) -> str:
        """The server's health status for this service: ``SERVING``, ``NOT_SERVING``…"""
        timeout, metadata = self.call_options(_HEALTH_CHECK, timeout)
        response = await self._health.Check(
            health_pb2.HealthCheckRequest(service=self.SERVICE.full_name),
            timeout=timeout,
            metadata=metadata,
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
