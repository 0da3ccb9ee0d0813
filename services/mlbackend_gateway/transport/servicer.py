"""The gateway's gRPC servicer: every method delegates to ``handlers`` (no try/except;
the shared interceptor maps domain errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from mlbackend.gateway.v1 import gateway_pb2 as pb
from mlbackend.gateway.v1 import gateway_pb2_grpc
from mlbackend_gateway.core.service import GatewayCore
from mlbackend_gateway.transport import handlers
from mlbackend_runtime.interceptor import caller
from mlbackend_runtime.streamed import AioStreams

Context = grpc.aio.ServicerContext[Any, Any]


class GatewayServicer(gateway_pb2_grpc.InferenceGatewayServiceServicer):
    def __init__(self, core: GatewayCore) -> None:
        self._core = core
        self.streams = AioStreams()
        """The open StreamPredict calls; the server drains them when it stops."""

    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        return await handlers.predict(self._core, request)

    async def StreamPredict(
        self, requests: AsyncIterator[pb.StreamPredictRequest], context: Context
    ) -> AsyncIterator[pb.StreamPredictResponse]:
        answers = self.streams.answer_each(
            requests, "Predict", lambda r: handlers.predict(self._core, r.request)
        )
        async for response in answers:
            yield pb.StreamPredictResponse(response=response)

    async def PredictBatch(
        self, request: pb.PredictBatchRequest, context: Context
    ) -> pb.PredictBatchResponse:
        return await handlers.predict_batch(self._core, request)

    async def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: Context
    ) -> pb.CreateExperimentResponse:
        return await handlers.create_experiment(self._core, request, caller().identity)

    async def GetExperiment(
        self, request: pb.GetExperimentRequest, context: Context
    ) -> pb.GetExperimentResponse:
        return await handlers.get_experiment(self._core, request)

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: Context
    ) -> pb.ListExperimentsResponse:
        return await handlers.list_experiments(self._core, request)

    async def StopExperiment(
        self, request: pb.StopExperimentRequest, context: Context
    ) -> pb.StopExperimentResponse:
        return await handlers.stop_experiment(self._core, request)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        return await handlers.list_models(self._core, request)
