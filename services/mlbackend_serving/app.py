"""Wiring of the model serving service: its own API and the Open Inference Protocol v2
on one port.

Its RPCs land with issue #5; until then the generated base servicers answer
UNIMPLEMENTED while health, reflection, auth and metrics already work.
"""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry

from mlbackend.inference.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from mlbackend.serving.v1 import serving_pb2, serving_pb2_grpc
from mlbackend_runtime.auth import Role
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_server
from mlbackend_runtime.settings import ServerSettings

_OIP = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]

# The OIP proto is the public one, without our role option: its roles are set here.
_OIP_ADMIN_METHODS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})
OIP_ROLES = {
    f"/{_OIP.full_name}/{m.name}": Role.ADMIN if m.name in _OIP_ADMIN_METHODS else Role.READER
    for m in _OIP.methods
}

SPEC = ServiceSpec(
    name="serving",
    grpc_services=(
        serving_pb2.DESCRIPTOR.services_by_name["ModelServingService"].full_name,
        _OIP.full_name,
    ),
    default_port=50053,
    default_metrics_port=9053,
    max_message_bytes=64 * 1024 * 1024,
    role_overrides=OIP_ROLES,
)


async def create_server(
    settings: ServerSettings, *, registry: CollectorRegistry | None = None
) -> RunningServer:
    # Until issue #5 the generated bases answer UNIMPLEMENTED (abstract only in the stubs).
    serving = serving_pb2_grpc.ModelServingServiceServicer()  # type: ignore[abstract]
    inference = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer()  # type: ignore[abstract]

    def register(server: grpc.aio.Server) -> None:
        serving_pb2_grpc.add_ModelServingServiceServicer_to_server(serving, server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, server)

    return await start_server(SPEC, settings, register, registry=registry)
