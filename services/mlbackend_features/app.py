"""Wiring of the feature store: settings → servicer → server.

Its RPCs land with issue #4; until then the generated base servicer answers
UNIMPLEMENTED while health, reflection, auth and metrics already work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from mlbackend.features.v1 import features_pb2, features_pb2_grpc
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_server
from mlbackend_runtime.settings import ServerSettings

SPEC = ServiceSpec(
    name="features",
    grpc_services=(features_pb2.DESCRIPTOR.services_by_name["FeatureStoreService"].full_name,),
    default_port=50051,
    default_metrics_port=9051,
    max_message_bytes=64 * 1024 * 1024,
)


async def create_server(
    settings: ServerSettings, *, registry: CollectorRegistry | None = None
) -> RunningServer:
    # The generated base answers UNIMPLEMENTED (it is abstract only in the stubs).
    servicer = features_pb2_grpc.FeatureStoreServiceServicer()  # type: ignore[abstract]
    return await start_server(
        SPEC,
        settings,
        lambda server: features_pb2_grpc.add_FeatureStoreServiceServicer_to_server(
            servicer, server
        ),
        registry=registry,
    )
