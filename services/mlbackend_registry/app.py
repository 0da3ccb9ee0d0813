"""Wiring of the model registry: settings → stores → core → servicer → server."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from mlbackend.registry.v1 import registry_pb2, registry_pb2_grpc
from mlbackend_clients import propagation
from mlbackend_models import loader
from mlbackend_registry.core.domain import ArtifactFormat
from mlbackend_registry.core.service import RegistryCore
from mlbackend_registry.stores.artifacts import ArtifactStore
from mlbackend_registry.stores.sqlalchemy_store import SqlAlchemyStore, engine_url
from mlbackend_registry.transport.servicer import RegistryServicer
from mlbackend_runtime.interceptor import caller
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_server
from mlbackend_runtime.settings import ServerSettings

SPEC = ServiceSpec(
    name="registry",
    grpc_services=(registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name,),
    default_port=50052,
    default_metrics_port=9052,
    max_message_bytes=8 * 1024 * 1024,
)


def _whoami() -> tuple[str, str]:
    call = propagation.current()
    return caller().identity, call.request_id if call is not None else ""


def _validate_artifact(path: Path, artifact_format: ArtifactFormat) -> None:
    """skops artifacts must load with trusted types (and sound trees) before they are kept.

    Pickle is never loaded here (that would run its code in the registry); whether it is
    accepted at all is the core's ``allow_pickle`` rule. ONNX is not inspected yet.
    """
    if artifact_format is ArtifactFormat.SKOPS:
        loader.load_artifact(
            path, expected_sha256=None, artifact_format=loader.ArtifactFormat.SKOPS
        )


async def build_core(settings: ServerSettings) -> RegistryCore:
    """The registry core on the configured stores, migrated and cleaned up after a crash."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore(engine_url(settings.database_url, settings.data_dir))
    artifacts = ArtifactStore(settings.data_dir / "artifacts")
    core = RegistryCore(
        store,
        artifacts,
        allow_pickle=settings.allow_pickle,
        whoami=_whoami,
        validate=_validate_artifact,
        # Other replicas may share a PostgreSQL database: re-read the change log each
        # second for their commits (SQLite is single-process: local wake-ups suffice).
        poll_seconds=1.0 if settings.database_url else None,
    )
    await core.start()
    return core


async def create_server(
    settings: ServerSettings, *, registry: CollectorRegistry | None = None
) -> RunningServer:
    core = await build_core(settings)
    servicer = RegistryServicer(core)
    try:
        running = await start_server(
            SPEC,
            settings,
            lambda server: registry_pb2_grpc.add_ModelRegistryServiceServicer_to_server(
                servicer, server
            ),
            registry=registry,
        )
    except BaseException:
        await core.close()
        raise
    running.on_stop(core.close)
    return running
