"""Wiring of the inference gateway: settings → servicer → server.

Its RPCs land with issue #6; until then the generated base servicer answers
UNIMPLEMENTED while health, reflection, auth and metrics already work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from mlbackend.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_server
from mlbackend_runtime.settings import ServerSettings

SPEC = ServiceSpec(
    name="gateway",
    grpc_services=(gateway_pb2.DESCRIPTOR.services_by_name["InferenceGatewayService"].full_name,),
    default_port=50050,
    default_metrics_port=9050,
    max_message_bytes=16 * 1024 * 1024,
)


async def create_server(
    settings: ServerSettings, *, registry: CollectorRegistry | None = None
) -> RunningServer:
    # The generated base answers UNIMPLEMENTED (it is abstract only in the stubs).
    servicer = gateway_pb2_grpc.InferenceGatewayServiceServicer()  # type: ignore[abstract]
    return await start_server(
        SPEC,
        settings,
        lambda server: gateway_pb2_grpc.add_InferenceGatewayServiceServicer_to_server(
            servicer, server
        ),
        registry=registry,
    )
