"""Wiring of the feature store: settings → stores → core → servicer → server.

The gRPC front is a thread-pool server by default (``transport.threaded``: online reads
on a small pool of their own, everything else on the event loop that owns the store);
``--features-front asyncio`` keeps the all-``grpc.aio`` server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from mlbackend.features.v1 import features_pb2, features_pb2_grpc
from mlbackend_features.core.service import FeatureStore
from mlbackend_features.stores.definitions import DefinitionStore, SqliteDefinitionStore
from mlbackend_features.stores.definitions_postgres import PostgresDefinitionStore
from mlbackend_features.stores.offline import OfflineStore
from mlbackend_features.stores.offline_postgres import PostgresOfflineStore
from mlbackend_features.stores.offline_sqlite import SqliteOfflineStore
from mlbackend_features.stores.online import OnlineStore
from mlbackend_features.stores.online_redis import RedisOnlineStore
from mlbackend_features.stores.online_sqlite import SqliteOnlineStore
from mlbackend_features.transport import threaded
from mlbackend_features.transport.metrics import FreshnessCollector
from mlbackend_features.transport.servicer import FeatureStoreServicer
from mlbackend_runtime.eager import EagerRequestPool
from mlbackend_runtime.errors import DomainError
from mlbackend_runtime.server import (
    RunningServer,
    ServiceSpec,
    start_server,
    start_thread_server,
)
from mlbackend_runtime.settings import Front, ServerSettings
from mlbackend_runtime.sql import is_postgres_url
from mlbackend_runtime.streamed import StreamSlots

logger = logging.getLogger("mlbackend.features")

# The thread-pool front: threads for every method but online reads (each holds one call,
# a stream to its end; a push stream one reader thread more), plus one per read stream
# it keeps open (``stream_slots``). Beyond ``max_concurrent_rpcs`` calls in progress
# besides those streams gRPC answers RESOURCE_EXHAUSTED.
CALL_THREADS = 32

SPEC = ServiceSpec(
    name="features",
    grpc_services=(features_pb2.DESCRIPTOR.services_by_name["FeatureStoreService"].full_name,),
    default_port=50051,
    default_metrics_port=9051,
    max_message_bytes=64 * 1024 * 1024,
)


FOLLOW_SECONDS = 1.0
"""How often a replica on a shared (PostgreSQL) log applies the others' commits online."""


def _online_store(settings: ServerSettings) -> OnlineStore:
    if settings.online_store == "redis" and settings.redis_url:
        return RedisOnlineStore(
            settings.redis_url, settings.redis_prefix, read_cache=settings.online_read_cache
        )
    return SqliteOnlineStore(
        settings.data_dir / "features" / "online.db", read_cache=settings.online_read_cache
    )


def _durable_stores(settings: ServerSettings) -> tuple[DefinitionStore, OfflineStore]:
    """Definitions and the offline commit log: PostgreSQL when ``database_url`` names one
    (shared by replicas), else SQLite files in the data directory."""
    if is_postgres_url(settings.database_url):
        assert settings.database_url is not None
        definitions = PostgresDefinitionStore(settings.database_url)
        return definitions, PostgresOfflineStore(settings.database_url)
    if settings.database_url is not None:
        # Another engine's URL (e.g. a SQLite URL meant for the registry): stay embedded.
        logger.warning("feature store: database_url is not PostgreSQL, using SQLite files")
    base = settings.data_dir / "features"
    return SqliteDefinitionStore(base / "definitions.db"), SqliteOfflineStore(base / "offline.db")


async def build_store(settings: ServerSettings) -> FeatureStore:
    """The feature store core on the configured engines, started (replay done)."""
    definitions, offline = _durable_stores(settings)
    store = FeatureStore(definitions, offline, _online_store(settings))
    await store.start()
    return store


async def _maintain(store: FeatureStore, interval: float) -> None:
    """TTL cleanup, offline retention and online catch-up, in bounded slices."""
    while True:
        await asyncio.sleep(interval)
        try:
            await store.refresh_definitions()
            await store.sync_online()
            await store.maintain()
        except DomainError as exc:
            logger.warning("feature store maintenance failed: %s", exc)
        except Exception:  # a background loop must outlive one bad pass
            logger.exception("feature store maintenance failed")


async def _follow(store: FeatureStore, interval: float) -> None:
    """With a log shared by replicas, bring the online store up to the others' writes."""
    while True:
        await asyncio.sleep(interval)
        try:
            await store.sync_online()
        except Exception:  # a background loop must outlive one bad pass
            logger.exception("feature store: following the shared log failed")


async def create_server(
    settings: ServerSettings,
    *,
    registry: CollectorRegistry | None = None,
    front: Front | None = None,
) -> RunningServer:
    """``front`` overrides ``settings.features_front`` (tests run both)."""
    front = front or settings.features_front
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    store = await build_store(settings)
    registry.register(FreshnessCollector(store))
    # What start-up leaves (modules, generated messages, definitions) lives as long as the
    # process: frozen, the collector never scans it again, so full collections under
    # load stay short.
    gc.collect()
    gc.freeze()
    pools: list[ThreadPoolExecutor] = []
    try:
        if front == "threads":
            loop = asyncio.get_running_loop()
            online = EagerRequestPool(threaded.ONLINE_READ_THREADS, "features-online")
            front_threads = CALL_THREADS + settings.stream_slots
            readers = ThreadPoolExecutor(front_threads, "features-push")
            pools += (online, readers)
            streams = StreamSlots("StreamOnlineFeatures", settings.stream_slots)
            handlers = threaded.handlers(store, loop, online, readers, streams)
            running = await start_thread_server(
                SPEC,
                settings,
                lambda server: server.add_generic_rpc_handlers(handlers),
                registry=registry,
                threads=front_threads,
                max_concurrent_rpcs=settings.max_concurrent_rpcs + settings.stream_slots,
            )
            running.on_drain(streams.drain)
        else:
            servicer = FeatureStoreServicer(store)
            running = await start_server(
                SPEC,
                settings,
                lambda server: features_pb2_grpc.add_FeatureStoreServiceServicer_to_server(
                    servicer, server
                ),
                registry=registry,
            )
            running.on_drain(servicer.streams.drain)
    except BaseException:
        for pool in pools:
            pool.shutdown(wait=False)
        await store.close()
        raise

    async def stop_pools() -> None:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)

    loops = [asyncio.create_task(_maintain(store, settings.maintenance_seconds))]
    if is_postgres_url(settings.database_url):
        loops.append(asyncio.create_task(_follow(store, FOLLOW_SECONDS)))

    async def stop_maintenance() -> None:
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    # Closers run last-registered first: the loop stops before the stores close.
    running.on_stop(store.close)
    running.on_stop(stop_pools)
    running.on_stop(stop_maintenance)
    return running
