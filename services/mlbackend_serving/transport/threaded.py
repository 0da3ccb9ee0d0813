"""Serving's two gRPC services for a thread-pool ``grpc.server`` (the default front).

Predict and ModelInfer run on the gRPC thread that received them: conversion,
validation and the batch (``ThreadBatcher``) happen there, with no hop to an event
loop (see ``app`` for what that measured).
Every other method is the asyncio servicer's own, run on the loop that owns the core
(loading, unloading and the registry follower live there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import grpc

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend.serving.v1 import serving_pb2 as pb
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.transport import converters as c
from mlbackend_serving.transport import oip as o
from mlbackend_serving.transport.servicers import InferenceServicer, ModelServingServicer

Blocking = Callable[[Any, grpc.ServicerContext], Any]


def handlers(core: ServingCore, loop: asyncio.AbstractEventLoop) -> list[grpc.GenericRpcHandler]:
    """The generic handlers of both services; ``loop`` runs the non-prediction methods."""

    def predict(request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        return c.predict_response(core.predict_blocking(*c.predict_call(request)))

    def infer(
        request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        return o.infer_response(request, core.predict_blocking(*o.infer_call(request)))

    return [
        _service(pb, "ModelServingService", ModelServingServicer(core), loop, {"Predict": predict}),
        _service(oip, "GRPCInferenceService", InferenceServicer(core), loop, {"ModelInfer": infer}),
    ]


def _service(
    module: ModuleType,
    name: str,
    servicer: object,
    loop: asyncio.AbstractEventLoop,
    blocking: dict[str, Blocking],
) -> grpc.GenericRpcHandler:
    service = module.DESCRIPTOR.services_by_name[name]
    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_type = getattr(module, method.input_type.name)
        response_type = getattr(module, method.output_type.name)
        behaviour = blocking.get(method.name) or _on_loop(getattr(servicer, method.name), loop)
        methods[method.name] = grpc.unary_unary_rpc_method_handler(
            behaviour, request_type.FromString, response_type.SerializeToString
        )
    return grpc.method_handlers_generic_handler(service.full_name, methods)


def _on_loop(
    method: Callable[[Any, Any], Awaitable[Any]], loop: asyncio.AbstractEventLoop
) -> Blocking:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        # The calling thread's context (request id, caller) goes along with the task.
        return asyncio.run_coroutine_threadsafe(_awaited(method(request, context)), loop).result()

    return call


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
