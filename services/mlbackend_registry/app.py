"""Wiring of the model registry: settings → servicer → server.

Its RPCs land with issue #3; until then the generated base servicer answers
UNIMPLEMENTED while health, reflection, auth and metrics already work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from mlbackend.registry.v1 import registry_pb2, registry_pb2_grpc
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_server
from mlbackend_runtime.settings import ServerSettings

SPEC = ServiceSpec(
    name="registry",
    grpc_services=(registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name,),
    default_port=50052,
    default_metrics_port=9052,
    max_message_bytes=8 * 1024 * 1024,
)


async def create_server(
    settings: ServerSettings, *, registry: CollectorRegistry | None = None
) -> RunningServer:
    # The generated base answers UNIMPLEMENTED (it is abstract only in the stubs).
    servicer = registry_pb2_grpc.ModelRegistryServiceServicer()  # type: ignore[abstract]
    return await start_server(
        SPEC,
        settings,
        lambda server: registry_pb2_grpc.add_ModelRegistryServiceServicer_to_server(
            servicer, server
        ),
        registry=registry,
    )
