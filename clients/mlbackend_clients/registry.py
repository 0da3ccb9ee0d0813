"""Typed client of the model registry (`mlbackend.registry.v1.ModelRegistryService`)."""

from __future__ import annotations

from mlbackend.registry.v1 import registry_pb2, registry_pb2_grpc
from mlbackend_clients.base import ServiceClient


class RegistryClient(ServiceClient["registry_pb2_grpc.ModelRegistryServiceAsyncStub"]):
    SERVICE = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"]
    STUB = registry_pb2_grpc.ModelRegistryServiceStub
