"""Wiring of the model serving service: its own API and the Open Inference Protocol v2
on one port, over one core that holds the loaded model versions.

Simple mode (``--model-dir``) loads and warms every version of the directory before
the server reports SERVING. Registry mode (``--registry`` without ``--model-dir``)
follows the registry's watch stream (see ``registry_source`` and ``core.follower``).

The gRPC front is a thread-pool ``grpc.server`` by default (``transport.threaded``):
predictions run on two threads of their own (``threaded.PredictionPool``). Measured
here (bench/serving --quick, same run), single-row ModelInfer at concurrency 8 and 32:
3,065-3,368 rps and 317-351 µs of server CPU per request against 2,295-3,045 rps and
358-489 µs on ``grpc.aio``; at concurrency 1, 483-509 µs against 697-726. Loading, unloading
and the registry follower stay on the event loop of the caller of
:func:`create_server`. ``--serving-front asyncio`` keeps the all-asyncio server.
"""

from __future__ import annotations

import asyncio
import gc
import os
from concurrent.futures import ThreadPoolExecutor

import grpc
from prometheus_client import CollectorRegistry
from threadpoolctl import threadpool_limits

from mlbackend.inference.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from mlbackend.serving.v1 import serving_pb2, serving_pb2_grpc
from mlbackend_models.loader import LoadPolicy
from mlbackend_runtime.auth import Role
from mlbackend_runtime.server import (
    RunningServer,
    ServiceSpec,
    start_server,
    start_thread_server,
)
from mlbackend_runtime.settings import Front, ServerSettings
from mlbackend_runtime.streamed import StreamSlots
from mlbackend_serving.core.model_dir import ModelDirectory
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.metrics import ModelMetrics
from mlbackend_serving.registry_source import follow_registry
from mlbackend_serving.transport import threaded
from mlbackend_serving.transport.servicers import InferenceServicer, ModelServingServicer

# Threads of the thread-pool front: each holds one call in progress (waiting for its
# batch included), plus one per StreamPredict stream it keeps open (``stream_slots``).
# Beyond ``max_concurrent_rpcs`` calls besides those streams gRPC answers
# RESOURCE_EXHAUSTED.
CALL_THREADS = 32

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
    # A 50 MB request is refused before it is parsed; a row limit guards the rest.
    max_message_bytes=32 * 1024 * 1024,
    role_overrides=OIP_ROLES,
)


def _single_threaded_native_code() -> None:
    # Measured here: OpenMP threads inside a model slow single-row serving on few cores
    # and stall next to other load; throughput comes from batching and replicas instead.
    # OpenMP's thread count is per calling thread, so every worker sets it.
    threadpool_limits(limits=1)


def model_executor() -> ThreadPoolExecutor:
    """The threads model compute (and artifact loading) runs on, off the event loop."""
    return ThreadPoolExecutor(
        max_workers=max(2, os.cpu_count() or 2),
        thread_name_prefix="model",
        initializer=_single_threaded_native_code,
    )


async def create_server(
    settings: ServerSettings,
    *,
    registry: CollectorRegistry | None = None,
    front: Front | None = None,
) -> RunningServer:
    """``front`` overrides ``settings.serving_front`` (tests compare both)."""
    front = front or settings.serving_front
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    directory = None
    if settings.model_dir is not None:
        directory = ModelDirectory(
            settings.model_dir, LoadPolicy(allow_pickle=settings.allow_pickle)
        )
    threads = front == "threads"
    core = ServingCore(
        model_executor(), directory=directory, observer=ModelMetrics(registry), threaded=threads
    )
    # Warm before taking traffic: health says SERVING only once this is done.
    await core.load_directory()
    # Measured: a full collection over what start-up leaves (~140k objects: modules,
    # models) pauses every request for ~80 ms. Frozen objects are never scanned again.
    gc.collect()
    gc.freeze()
    following = await follow_registry(settings, core)

    own_api = ModelServingServicer(core)

    def register(server: grpc.aio.Server) -> None:
        serving_pb2_grpc.add_ModelServingServiceServicer_to_server(own_api, server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(core), server
        )

    if threads:
        loop = asyncio.get_running_loop()
        # Batches run on these threads.
        front_threads = CALL_THREADS + settings.stream_slots
        predictions = threaded.PredictionPool(core, front_threads, _single_threaded_native_code)
        streams = StreamSlots("StreamPredict", settings.stream_slots)
        try:
            running = await start_thread_server(
                SPEC,
                settings,
                lambda server: server.add_generic_rpc_handlers(
                    threaded.handlers(core, loop, predictions, streams)
                ),
                registry=registry,
                threads=front_threads,
                max_concurrent_rpcs=settings.max_concurrent_rpcs + settings.stream_slots,
            )
        except BaseException:
            predictions.shutdown(wait=False)
            raise

        async def stop_predictions() -> None:
            predictions.shutdown(wait=False, cancel_futures=True)

        running.on_stop(stop_predictions)
        running.on_drain(streams.drain)
    else:
        running = await start_server(SPEC, settings, register, registry=registry)
        running.on_drain(own_api.streams.drain)
    # Closers run last-registered first: the core drains its batches before the pool stops.
    running.on_stop(core.close)
    if following is not None:
        await following.attach(running)
    return running
