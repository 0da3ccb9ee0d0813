"""Typed client of the model serving service's own API (`mlbackend.serving.v1`)."""

from __future__ import annotations

from mlbackend.serving.v1 import serving_pb2, serving_pb2_grpc
from mlbackend_clients.base import ServiceClient


class ServingClient(ServiceClient["serving_pb2_grpc.ModelServingServiceAsyncStub"]):
    SERVICE = serving_pb2.DESCRIPTOR.services_by_name["ModelServingService"]
    STUB = serving_pb2_grpc.ModelServingServiceStub
