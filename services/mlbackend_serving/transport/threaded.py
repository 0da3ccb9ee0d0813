"""Serving's two gRPC services for a thread-pool ``grpc.server`` (the default front).

Predict and ModelInfer run on the gRPC thread that received them: conversion,
validation and the batch (``ThreadBatcher``) happen there, with no hop to an event
loop (see ``app`` for what that measured).
Every other method is the asyncio servicer's own, run on the loop that owns the core
(loading, unloading and the registry follower live there).
"""

from __future__ import annotations

import asyncio

import grpc

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend.serving.v1 import serving_pb2 as pb
from mlbackend_runtime.threaded import service_handlers
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.transport import converters as c
from mlbackend_serving.transport import oip as o
from mlbackend_serving.transport.servicers import InferenceServicer, ModelServingServicer


def handlers(core: ServingCore, loop: asyncio.AbstractEventLoop) -> list[grpc.GenericRpcHandler]:
    """The generic handlers of both services; ``loop`` runs the non-prediction methods."""

    def predict(request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        return c.predict_response(core.predict_blocking(*c.predict_call(request)))

    def infer(
        request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        return o.infer_response(request, core.predict_blocking(*o.infer_call(request)))

    return [
        service_handlers(
            pb, "ModelServingService", ModelServingServicer(core), loop, {"Predict": predict}
        ),
        service_handlers(
            oip, "GRPCInferenceService", InferenceServicer(core), loop, {"ModelInfer": infer}
        ),
    ]
