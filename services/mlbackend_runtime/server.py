"""Bootstrap of a service process: bind, health, reflection, metrics, auth, shutdown.

``app.py`` of each service builds its core and servicers, then calls
:func:`start_server` with a :class:`ServiceSpec` and a function that adds its
servicers to the ``grpc.aio.Server``. The result knows its bound ports.
:func:`start_thread_server` is the same for a thread-pool ``grpc.server`` (serving's
front, see bench/serving); health, reflection, metrics, auth and TLS are the same.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

import grpc
from grpc_health.v1 import health as health_sync
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from mlbackend_runtime.auth import (
    Authenticator,
    Principal,
    Role,
    TokenStore,
    roles_from_descriptors,
)
from mlbackend_runtime.eager import EagerRequestPool
from mlbackend_runtime.interceptor import CallInterceptor, Registrar, ThreadCallInterceptor
from mlbackend_runtime.metrics import MetricsEndpoint, RpcMetrics, serve_metrics
from mlbackend_runtime.settings import ServerSettings
from mlbackend_runtime.tls import server_credentials, server_ssl_context

logger = logging.getLogger("mlbackend.server")

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class ConfigError(ValueError):
    """The settings cannot be used to start a server; the message says why."""


@dataclass(frozen=True)
class ServiceSpec:
    """What the runtime needs to know about one service."""

    name: str
    """Short name, as in ``mlbackend serve NAME``."""
    grpc_services: tuple[str, ...]
    """Full names of the gRPC services on the port; each gets a health status."""
    default_port: int
    default_metrics_port: int
    max_message_bytes: int
    role_overrides: Mapping[str, Role] = field(default_factory=dict)
    """Required roles for methods whose proto cannot declare them (full method path)."""


# A service's ``register`` adds its handlers (``add_generic_rpc_handlers``, or the
# generated ``add_…Servicer_to_server``) and nothing else: what it is given stands in
# for the server and wraps each handler in the runtime's interception.
Register = Callable[[grpc.aio.Server], None]
RegisterThreaded = Callable[[grpc.Server], None]


@dataclass
class RunningServer:
    """A started server; ``port`` is the bound one (useful with port 0)."""

    spec: ServiceSpec
    settings: ServerSettings
    port: int
    health_port: int | None
    metrics: MetricsEndpoint
    registry: CollectorRegistry
    health: health_aio.HealthServicer | health_sync.HealthServicer
    _server: grpc.aio.Server | grpc.Server
    _health_server: grpc.aio.Server | grpc.Server | None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _drains: list[Callable[[], None]] = field(default_factory=list)
    extra_ports: dict[str, int] = field(default_factory=dict)
    """Other bound ports a service opens itself, by name (e.g. the gateway's "http")."""

    @property
    def address(self) -> str:
        return f"{_host_for_uri(self.settings.host)}:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        """Report every service of this process (and the overall "") as (not) serving."""
        state = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.spec.grpc_services):
            await _maybe_await(self.health.set(name, state))

    def on_drain(self, drain: Callable[[], None]) -> None:
        """Run ``drain`` when the server starts to stop, before it waits for in-flight
        calls (to end calls that would otherwise hold it for its whole grace period)."""
        self._drains.append(drain)

    def on_stop(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run ``close`` (stores, executors) once in-flight calls have drained; the last
        registered runs first."""
        self._closers.append(close)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within ``grace`` seconds."""
        if self._stopped.is_set():
            return
        grace = self.settings.grace_seconds if grace is None else grace
        logger.info("%s: shutting down, draining for up to %.1f s", self.spec.name, grace)
        # Probes see NOT_SERVING first, so load balancers move traffic away.
        await _maybe_await(self.health.enter_graceful_shutdown())
        for drain in self._drains:
            drain()
        await _stop(self._server, grace)
        if self._health_server is not None:
            await _stop(self._health_server, 0)
        for close in reversed(self._closers):
            try:
                await close()
            except Exception:
                logger.exception("%s: a resource failed to close", self.spec.name)
        self.metrics.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def _maybe_await(result: object) -> None:
    if inspect.isawaitable(result):
        await result


async def _stop(server: grpc.aio.Server | grpc.Server, grace: float) -> None:
    if isinstance(server, grpc.aio.Server):
        await server.stop(grace)
    else:
        # The returned event is set once in-flight calls have finished (or grace passed).
        await asyncio.to_thread(server.stop(grace).wait)


def is_loopback(host: str) -> bool:
    """True when ``host`` only ever reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_exposure(settings: ServerSettings) -> None:
    """Refuse to expose an unauthenticated plaintext server beyond loopback."""
    if is_loopback(settings.host) or settings.insecure:
        return
    missing = [
        what
        for what, present in (("TLS", settings.tls_enabled), ("auth", settings.token_file))
        if not present
    ]
    if missing:
        raise ConfigError(
            f"refusing to bind {settings.host} without {' and '.join(missing)}: "
            "give --tls-cert/--tls-key and --token-file, or --insecure to accept the risk"
        )


def _host_for_uri(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Two processes must never share a port silently.
        ("grpc.so_reuseport", 0),
        # Accept the clients' keepalive pings (every 30 s, also between calls).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def _bind(server: grpc.aio.Server | grpc.Server, address: str, settings: ServerSettings) -> int:
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            creds = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
            return int(server.add_secure_port(address, creds))
        return int(server.add_insecure_port(address))
    except RuntimeError as exc:
        raise ConfigError(f"cannot bind {address}: {exc}") from None


async def start_server(
    spec: ServiceSpec,
    settings: ServerSettings,
    register: Register,
    *,
    registry: CollectorRegistry | None = None,
) -> RunningServer:
    """Build, bind and start the server of one service."""
    parts = _Parts.build(spec, settings, registry)
    server = grpc.aio.server(options=_server_options(parts.max_bytes))
    interception = CallInterceptor(
        parts.authenticator, parts.metrics, max_calls=settings.max_concurrent_rpcs
    )
    register(cast(grpc.aio.Server, Registrar(server, interception)))
    health = health_aio.HealthServicer()
    health_server: grpc.aio.Server | None = None
    if settings.health_port is not None:
        # Plaintext, health only: what Kubernetes' built-in gRPC probe can speak.
        health_server = grpc.aio.server(options=_server_options(64 * 1024))
    port, health_port = parts.bind(server, health, health_server)
    metrics = parts.serve_metrics()
    await server.start()
    if health_server is not None:
        await health_server.start()
    return await parts.started(port, health_port, metrics, health, server, health_server)


async def start_thread_server(
    spec: ServiceSpec,
    settings: ServerSettings,
    register: RegisterThreaded,
    *,
    registry: CollectorRegistry | None = None,
    threads: int,
    max_concurrent_rpcs: int,
) -> RunningServer:
    """:func:`start_server` for a thread-pool ``grpc.server``: handlers are plain
    functions run on ``threads`` threads; past ``max_concurrent_rpcs`` calls in progress
    gRPC answers RESOURCE_EXHAUSTED. Stopping still happens from the caller's loop."""
    parts = _Parts.build(spec, settings, registry)
    server = grpc.server(
        EagerRequestPool(
            max_workers=threads,
            thread_name_prefix=f"{spec.name}-rpc",
        ),
        options=_server_options(parts.max_bytes),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    interception = ThreadCallInterceptor(parts.authenticator, parts.metrics)
    register(cast(grpc.Server, Registrar(server, interception)))
    health_servicer = health_sync.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=ThreadPoolExecutor(max_workers=1),
    )
    health_server: grpc.Server | None = None
    if settings.health_port is not None:
        health_server = grpc.server(
            ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{spec.name}-health"),
            options=_server_options(64 * 1024),
        )
    port, health_port = parts.bind(server, health_servicer, health_server)
    metrics = parts.serve_metrics()
    server.start()
    if health_server is not None:
        health_server.start()
    return await parts.started(port, health_port, metrics, health_servicer, server, health_server)


@dataclass
class _Parts:
    """What both kinds of server share: auth, metrics, binding, reflection."""

    spec: ServiceSpec
    settings: ServerSettings
    registry: CollectorRegistry
    authenticator: Authenticator
    metrics: RpcMetrics
    max_bytes: int
    auth_on: bool

    @classmethod
    def build(
        cls, spec: ServiceSpec, settings: ServerSettings, registry: CollectorRegistry | None
    ) -> _Parts:
        check_exposure(settings)
        registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        tokens = TokenStore(settings.token_file) if settings.token_file is not None else None
        roles = roles_from_descriptors(spec.grpc_services, spec.role_overrides)
        return cls(
            spec,
            settings,
            registry,
            Authenticator(tokens, roles),
            RpcMetrics(registry, spec.name),
            settings.max_message_bytes or spec.max_message_bytes,
            tokens is not None,
        )

    def bind(
        self,
        server: grpc.aio.Server | grpc.Server,
        health: health_aio.HealthServicer | health_sync.HealthServicer,
        health_server: grpc.aio.Server | grpc.Server | None,
    ) -> tuple[int, int | None]:
        """Add health and reflection, bind the port (and the health port); the bound ports."""
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (*self.spec.grpc_services, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
        settings = self.settings
        host = _host_for_uri(settings.host)
        port = self.spec.default_port if settings.port is None else settings.port
        port = _bind(server, f"{host}:{port}", settings)
        health_port: int | None = None
        if health_server is not None and settings.health_port is not None:
            health_pb2_grpc.add_HealthServicer_to_server(health, health_server)
            health_port = int(health_server.add_insecure_port(f"{host}:{settings.health_port}"))
        return port, health_port

    def metrics_auth(self) -> Callable[[str | None], Principal] | None:
        """What a scrape of ``/metrics`` must present: with tokens on, a token of any role
        (unless ``metrics_open``); None when anyone may read them."""
        if not self.auth_on or self.settings.metrics_open:
            return None
        return functools.partial(self.authenticator.require, Role.READER, what="/metrics")

    def serve_metrics(self) -> MetricsEndpoint:
        settings = self.settings
        metrics_port = (
            self.spec.default_metrics_port
            if settings.metrics_port is None
            else settings.metrics_port
        )
        tls = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = server_ssl_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        try:
            return serve_metrics(
                self.registry, settings.host, metrics_port, tls=tls, authorize=self.metrics_auth()
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {_host_for_uri(settings.host)}:{metrics_port}: {exc}"
            ) from None

    async def started(
        self,
        port: int,
        health_port: int | None,
        metrics: MetricsEndpoint,
        health: health_aio.HealthServicer | health_sync.HealthServicer,
        server: grpc.aio.Server | grpc.Server,
        health_server: grpc.aio.Server | grpc.Server | None,
    ) -> RunningServer:
        settings = self.settings
        running = RunningServer(
            self.spec, settings, port, health_port, metrics, self.registry, health, server,
            health_server,
        )  # fmt: skip
        await running.set_serving(True)
        logger.info(
            "%s serving on %s (%s, auth %s), metrics %s",
            self.spec.name,
            running.address,
            "mTLS" if settings.tls_client_ca else "TLS" if settings.tls_enabled else "plaintext",
            "on" if self.auth_on else "off",
            metrics.url,
        )
        return running


async def run_until_signalled(running: RunningServer) -> None:
    """Serve until SIGTERM or SIGINT, then drain within the grace period."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(running.wait_stopped())
    signalled = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, signalled}, return_when=asyncio.FIRST_COMPLETED)
    for task in (waiter, signalled):
        task.cancel()
    await running.stop()
