"""Wiring of the monitoring service: settings → servicer → server.

Its RPCs land with issue #6; until then the generated base servicer answers
UNIMPLEMENTED while health, reflection, auth and metrics already work.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from mlbackend.monitoring.v1 import monitoring_pb2, monitoring_pb2_grpc
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_server
from mlbackend_runtime.settings import ServerSettings

SPEC = ServiceSpec(
    name="monitoring",
    grpc_services=(monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name,),
    default_port=50054,
    default_metrics_port=9054,
    max_message_bytes=16 * 1024 * 1024,
)


async def create_server(
    settings: ServerSettings, *, registry: CollectorRegistry | None = None
) -> RunningServer:
    # The generated base answers UNIMPLEMENTED (it is abstract only in the stubs).
    servicer = monitoring_pb2_grpc.MonitoringServiceServicer()  # type: ignore[abstract]
    return await start_server(
        SPEC,
        settings,
        lambda server: monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server(
            servicer, server
        ),
        registry=registry,
    )
