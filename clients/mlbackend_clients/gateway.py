"""Typed client of the inference gateway (`mlbackend.gateway.v1.InferenceGatewayService`)."""

from __future__ import annotations

from mlbackend.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mlbackend_clients.base import ServiceClient


class GatewayClient(ServiceClient["gateway_pb2_grpc.InferenceGatewayServiceAsyncStub"]):
    SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["InferenceGatewayService"]
    STUB = gateway_pb2_grpc.InferenceGatewayServiceStub
