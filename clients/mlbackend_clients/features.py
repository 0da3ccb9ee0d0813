"""Typed client of the feature store (`mlbackend.features.v1.FeatureStoreService`)."""

from __future__ import annotations

from mlbackend.features.v1 import features_pb2, features_pb2_grpc
from mlbackend_clients.base import ServiceClient


class FeatureStoreClient(ServiceClient["features_pb2_grpc.FeatureStoreServiceAsyncStub"]):
    SERVICE = features_pb2.DESCRIPTOR.services_by_name["FeatureStoreService"]
    STUB = features_pb2_grpc.FeatureStoreServiceStub
