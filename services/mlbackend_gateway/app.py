"""Wiring of the inference gateway: settings → clients → core → servicer + JSON front.

Dependencies and their per-call timeouts (each capped by the caller's deadline;
``--timeouts`` overrides them): registry 2 s, feature store 1 s, serving 2 s,
monitoring 5 s. The version cache is
exact while the registry's watch stream is live and falls back to a 5 s TTL while it
is not. Experiments live in SQLite under ``data_dir/gateway`` or in PostgreSQL
(``database_url``), so every replica routes the same way.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import grpc
from prometheus_client import CollectorRegistry

from mlbackend.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mlbackend_clients.channel import ChannelOptions, TlsOptions
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.monitoring import MonitoringClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_clients.serving import ServingClient
from mlbackend_clients.streams import StreamLimits
from mlbackend_gateway.core.experiments import ExperimentRouter, ExperimentService
from mlbackend_gateway.core.model import (
    FeatureTable,
    FieldPath,
    ModelVersionInfo,
    PredictionInput,
    RegisteredModelInfo,
    Scalar,
    Scored,
)
from mlbackend_gateway.core.pipeline import InferencePipeline, PipelineLimits
from mlbackend_gateway.core.ports import FeatureReader, ModelCatalog, Scorer
from mlbackend_gateway.core.records import QueueLimits, RecordQueue
from mlbackend_gateway.core.service import GatewayCore
from mlbackend_gateway.core.versions import VersionResolver
from mlbackend_gateway.http import JsonFront
from mlbackend_gateway.metrics import GatewayMetrics
from mlbackend_gateway.stores.sql import SqlExperimentStore, engine_url
from mlbackend_gateway.transport.servicer import GatewayServicer
from mlbackend_gateway.upstream.coalesce import CoalesceLimits
from mlbackend_gateway.upstream.features import FeatureStoreReader
from mlbackend_gateway.upstream.monitoring import MonitoringSink
from mlbackend_gateway.upstream.registry import RegistryCatalog, RegistryWatcher
from mlbackend_gateway.upstream.serving import ServingScorer
from mlbackend_runtime.auth import Authenticator, TokenStore, roles_from_descriptors
from mlbackend_runtime.errors import DependencyUnavailable
from mlbackend_runtime.server import ConfigError, RunningServer, ServiceSpec, start_server
from mlbackend_runtime.settings import ServerSettings
from mlbackend_runtime.tls import server_ssl_context

SPEC = ServiceSpec(
    name="gateway",
    grpc_services=(gateway_pb2.DESCRIPTOR.services_by_name["InferenceGatewayService"].full_name,),
    default_port=50050,
    default_metrics_port=9050,
    max_message_bytes=16 * 1024 * 1024,
)


@dataclass(frozen=True)
class GatewayOptions:
    """Tunables; ``from_settings`` applies the ``--timeouts`` and ``--max-in-flight`` flags,
    tests pass their own."""

    registry_timeout: float = 2.0
    features_timeout: float = 1.0
    serving_timeout: float = 2.0
    monitoring_timeout: float = 5.0
    version_cache_ttl: float = 5.0
    experiment_cache_ttl: float = 1.0
    pipeline: PipelineLimits = field(default_factory=PipelineLimits)
    records: QueueLimits = field(default_factory=QueueLimits)
    coalesce: CoalesceLimits = field(default_factory=CoalesceLimits)
    streams: StreamLimits = field(default_factory=StreamLimits)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> GatewayOptions:
        defaults = cls()
        timeouts = settings.dependency_timeouts()
        pipeline = defaults.pipeline
        if settings.max_in_flight is not None:
            pipeline = replace(pipeline, max_in_flight=settings.max_in_flight)
        coalesce = defaults.coalesce
        if settings.coalesce_rows is not None:
            coalesce = replace(coalesce, max_rows=settings.coalesce_rows)
        streams = defaults.streams
        if settings.upstream_streams is not None:
            streams = replace(streams, most=settings.upstream_streams)
        return replace(
            defaults,
            registry_timeout=timeouts.get("registry", defaults.registry_timeout),
            features_timeout=timeouts.get("features", defaults.features_timeout),
            serving_timeout=timeouts.get("serving", defaults.serving_timeout),
            monitoring_timeout=timeouts.get("monitoring", defaults.monitoring_timeout),
            pipeline=pipeline,
            coalesce=coalesce,
            streams=streams,
        )


class _Missing:
    """Stands in for a dependency that is not configured: every call fails naming it."""

    def __init__(self, dependency: str) -> None:
        self._dependency = dependency

    def _fail(self) -> DependencyUnavailable:
        return DependencyUnavailable(self._dependency, f"no {self._dependency} configured")

    async def read(
        self, version: ModelVersionInfo, inputs: Sequence[PredictionInput], path: FieldPath
    ) -> FeatureTable:
        raise self._fail()

    async def score(self, model: str, version: int, vectors: Sequence[Sequence[Scalar]]) -> Scored:
        raise self._fail()

    async def get_model(self, model: str) -> RegisteredModelInfo:
        raise self._fail()

    async def get_version(self, model: str, version: int) -> ModelVersionInfo:
        raise self._fail()

    async def list_models(self, page_size: int, page_token: str) -> tuple[list[str], str]:
        raise self._fail()


def _options(settings: ServerSettings) -> ChannelOptions:
    # Per-dependency timeouts are passed on each call (GatewayOptions), each capped by
    # the caller's remaining deadline: by the channel's interceptors, or on the hot path
    # (feature store, serving: two calls per prediction) by the caller itself through
    # ``client.call_options``, which spares grpc.aio's interceptor task on every call.
    return ChannelOptions(
        token=settings.token.get_secret_value() if settings.token is not None else None,
        tls=TlsOptions(ca_cert=settings.tls_ca) if settings.tls_ca is not None else None,
    )


def _http_tls(settings: ServerSettings) -> ssl.SSLContext | None:
    """The gRPC port's certificate and client CA for the JSON front: a gateway with TLS
    never answers HTTP in plaintext beside it."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_ssl_context(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def http_port(running: RunningServer) -> int | None:
    """The bound port of the gateway's JSON/HTTP front (None when it is off)."""
    return running.extra_ports.get("http")


async def create_server(
    settings: ServerSettings,
    *,
    registry: CollectorRegistry | None = None,
    options: GatewayOptions | None = None,
) -> RunningServer:
    options = options or GatewayOptions.from_settings(settings)
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = GatewayMetrics(registry)
    closers = []

    registry_client = None
    catalog: ModelCatalog = _Missing("registry")
    if settings.registry:
        registry_client = RegistryClient.connect(settings.registry, _options(settings))
        catalog = RegistryCatalog(registry_client, options.registry_timeout)
        closers.append(registry_client.close)
    features: FeatureReader = _Missing("feature-store")
    if settings.features:
        features_client = FeatureStoreClient.connect(
            settings.features, _options(settings), interceptors=False
        )
        reader = FeatureStoreReader(
            features_client,
            options.features_timeout,
            options.coalesce,
            metrics.upstream("feature-store"),
            options.streams,
        )
        closers += [reader.close, features_client.close]
        features = reader
    scorer: Scorer = _Missing("serving")
    if settings.serving:
        serving_client = ServingClient.connect(
            settings.serving, _options(settings), interceptors=False
        )
        serving_scorer = ServingScorer(
            serving_client,
            options.serving_timeout,
            options.coalesce,
            metrics.upstream("serving"),
            options.streams,
        )
        closers += [serving_scorer.close, serving_client.close]
        scorer = serving_scorer
    sink = None
    if settings.monitoring:
        monitoring_client = MonitoringClient.connect(settings.monitoring, _options(settings))
        sink = MonitoringSink(monitoring_client, options.monitoring_timeout)
        closers.append(monitoring_client.close)

    store = SqlExperimentStore(engine_url(settings.database_url, settings.data_dir / "gateway"))
    resolver = VersionResolver(catalog, ttl=options.version_cache_ttl)
    router = ExperimentRouter(store, ttl=options.experiment_cache_ttl)
    records = RecordQueue(sink, options.records, metrics.drop, metrics.sent)
    pipeline = InferencePipeline(
        resolver, features, scorer, router, records, options.pipeline,
        metrics.shadow_drop,
    )  # fmt: skip
    core = GatewayCore(
        pipeline, ExperimentService(store, router), router, catalog,
        options.serving_timeout,
    )  # fmt: skip
    servicer = GatewayServicer(core)

    def register(server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_InferenceGatewayServiceServicer_to_server(servicer, server)

    running = await start_server(SPEC, settings, register, registry=registry)
    running.on_drain(servicer.streams.drain)
    records.start()
    watcher = None
    if registry_client is not None:
        watcher = RegistryWatcher(
            registry_client, resolver, lambda live: metrics.registry_watch_live.set(int(live))
        )
        watcher.start()

    front = None
    if settings.http_port is not None:
        tokens = TokenStore(settings.token_file) if settings.token_file is not None else None
        front = JsonFront(
            core,
            Authenticator(tokens, roles_from_descriptors(SPEC.grpc_services)),
            registry,
            settings.max_message_bytes or SPEC.max_message_bytes,
            metrics_open=settings.metrics_open,
        )
        try:
            port = await front.start(settings.host, settings.http_port, _http_tls(settings))
        except OSError as exc:
            await running.stop(0)
            raise ConfigError(
                f"cannot serve JSON/HTTP on port {settings.http_port}: {exc}"
            ) from None
        running.extra_ports["http"] = port

    # Closers run last-registered first: stop taking HTTP requests, stop the watch and
    # shadows, flush records, then close channels and the store.
    async def close_clients() -> None:
        for close in closers:
            await close()

    running.on_stop(close_clients)
    running.on_stop(store.close)
    running.on_stop(records.close)
    running.on_stop(pipeline.shadows.close)
    if watcher is not None:
        running.on_stop(watcher.close)
    if front is not None:
        running.on_stop(front.close)
    return running
