"""Serving's two gRPC services for a thread-pool ``grpc.server`` (the default front).

Predict and ModelInfer run on a small pool of their own (``PredictionPool``):
conversion, validation and the batch (``ThreadBatcher``) happen on the thread that
took the call, with no hop to an event loop (see ``app`` for what that measured).
Every other method is the asyncio servicer's own, run on the loop that owns the core
(loading, unloading and the registry follower live there).

ModelInfer arrives as wire bytes: the usual single-tensor request is read in C and
answered with bytes written directly (``wire``); to a model whose trees are walked in C
it is predicted on the calling thread with no queue (``ServingCore.predict_light``).
Any other request is parsed by protobuf and takes the general path, which also says
what is wrong with it. StreamPredict answers each message of its stream with Predict's
function, on the front thread the stream holds (``mlbackend_runtime.streamed``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import grpc

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend.serving.v1 import serving_pb2 as pb
from mlbackend_runtime.eager import EagerRequestPool
from mlbackend_runtime.streamed import StreamSlots, answer_each
from mlbackend_runtime.threaded import parsed, service_handlers
from mlbackend_serving.core.inputs import Tensors
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.transport import converters as c
from mlbackend_serving.transport import oip as o
from mlbackend_serving.transport import wire
from mlbackend_serving.transport.servicers import InferenceServicer, ModelServingServicer

PREDICT_THREADS = 2
"""Threads predictions run on while no model waits for its batches to fill.

Measured here (bench/serving --quick, single-row ModelInfer, runs back to back): on
the front's 64 threads, 2,673 / 2,289 rps at concurrency 32 (RandomForest /
HistGradientBoosting), 396 / 462 µs of server CPU per request; on 2 threads of their
own 3,176 / 3,416 rps, 343 / 322 µs, p99 lower; on 1 thread 2,236 / 2,361, on 3 threads
2,908 / 2,942. Dozens of threads hand the GIL back and forth, and batches stayed at 1-2
rows on average anyway; two take the queued calls one after another.

Measured again once queued calls had their messages received early
(``mlbackend_runtime.eager``; 4 alternated 5 s rounds at c=32 against 2 threads, hgb /
rf): 3 threads 3,374 / 3,307 rps against 3,583 / 3,265; 1 thread 2,419 / 2,525 against
3,413 / 3,066. Two stay."""


class PredictionPool(EagerRequestPool):
    """The pool gRPC runs Predict and ModelInfer on (their ``experimental_thread_pool``);
    like the front's own pool it receives a queued call's request early.

    A single-row ModelInfer or Predict to a light model called beside the queue (a C
    tree walk of microseconds, ``ServingCore.answers_at_once``) is not queued at all: it
    is answered on gRPC's polling thread as its message arrives (``EagerRequestPool``'s
    ``at_once``), with no hand-over to a pool thread and back.

    ``PREDICT_THREADS`` threads, unless a loaded model waits for its batches to fill
    (``max_wait`` > 0): a request waiting in a batch holds its thread, so a batch can
    only grow as large as there are threads to bring requests to it. Calls then go to
    ``wide`` (as many threads as the front), checked per call.
    """

    def __init__(
        self, core: ServingCore, wide_threads: int, initializer: Callable[[], object]
    ) -> None:
        super().__init__(
            PREDICT_THREADS,
            "serving-predict",
            initializer=initializer,
            at_once=functools.partial(_answered_at_once, core),
        )
        self._core = core
        self.wide = EagerRequestPool(wide_threads, "serving-batch", initializer=initializer)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._core.fills_batches:
            return self.wide.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.wide.shutdown(wait, cancel_futures=cancel_futures)
        super().shutdown(wait, cancel_futures=cancel_futures)


def _answered_at_once(core: ServingCore, request: object) -> bool:
    """Whether a call to the pool can be answered where its message arrives: a
    single-row ModelInfer (its wire bytes, read in C) or Predict to a model that answers
    at once."""
    if type(request) is pb.PredictRequest:
        rows = len(request.vectors) + len(request.rows)
        return rows == 1 and core.answers_at_once(request.model, c.selector(request.version))
    if type(request) is not bytes:
        return False
    usual = wire.usual_request(request)
    if usual is None or len(usual.shape) != 2 or usual.shape[0] != 1:
        return False
    return core.answers_at_once(usual.model_name, o.selector(usual.model_version))


def handlers(
    core: ServingCore,
    loop: asyncio.AbstractEventLoop,
    predictions: PredictionPool,
    streams: StreamSlots,
) -> list[grpc.GenericRpcHandler]:
    """The generic handlers of both services; ``loop`` runs the non-prediction methods;
    ``streams`` holds the open StreamPredict calls (drained when the server stops)."""

    def predict(request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        return c.predict_response(core.predict_blocking(*c.predict_call(request)))

    def infer(data: bytes, context: grpc.ServicerContext) -> bytes | oip.ModelInferResponse:
        usual = wire.usual_request(data)
        if usual is None:
            request = parsed(oip.ModelInferRequest, data)
            return o.infer_response(request, core.predict_blocking(*o.infer_call(request)))
        name, version = usual.model_name, o.selector(usual.model_version)
        labels = wire.wants_labels(usual)
        values = wire.row_values(usual)
        if values is not None:
            answer = core.predict_row(name, version, usual.input_name, values, labels=labels)
            if answer is not None:
                return wire.infer_row_response(usual, answer)
        tensor = wire.input_tensor(usual)
        result = core.predict_light(name, version, tensor, labels=labels)
        if result is None:
            result = core.predict_blocking(name, version, Tensors([tensor]))
        return wire.infer_response(usual, result)

    def stream_predict(messages: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        # On a front thread, which the stream holds while it is open (not one of the
        # prediction pool's, which unary calls share).
        return answer_each(
            messages,
            context,
            lambda data: predict(parsed(pb.PredictRequest, data), context),
            streams,
            "Predict",
        )

    predict.experimental_thread_pool = predictions  # type: ignore[attr-defined]
    infer.experimental_thread_pool = predictions  # type: ignore[attr-defined]
    return [
        service_handlers(
            pb,
            "ModelServingService",
            ModelServingServicer(core),
            loop,
            {"Predict": predict, "StreamPredict": stream_predict},
            raw={"StreamPredict"},
        ),
        service_handlers(
            oip,
            "GRPCInferenceService",
            InferenceServicer(core),
            loop,
            {"ModelInfer": infer},
            raw={"ModelInfer"},
        ),
    ]
