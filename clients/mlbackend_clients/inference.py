"""Typed client of the Open Inference Protocol v2 (``inference.GRPCInferenceService``).

Any OIP client (tritonclient, KServe's SDK) works against the serving service too;
this one reuses mlbackend's channel factory (auth, TLS, retries).
"""

from __future__ import annotations

from mlbackend.inference.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from mlbackend_clients.base import ServiceClient


class InferenceClient(ServiceClient["grpc_predict_v2_pb2_grpc.GRPCInferenceServiceAsyncStub"]):
    SERVICE = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    STUB = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub
