"""The two gRPC fronts of serving: our own API and the Open Inference Protocol v2.

Each method converts the request, awaits the core, converts the result. Errors are
domain exceptions mapped by the shared interceptor. ``threaded`` puts the same methods
on a thread-pool server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any, TypeAlias

import grpc

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend.inference.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from mlbackend.serving.v1 import serving_pb2 as pb
from mlbackend.serving.v1 import serving_pb2_grpc
from mlbackend_runtime.streamed import AioStreams
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.transport import converters as c
from mlbackend_serving.transport import oip as o

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class ModelServingServicer(serving_pb2_grpc.ModelServingServiceServicer):
    def __init__(self, core: ServingCore) -> None:
        self._core = core
        self.streams = AioStreams()
        """The open StreamPredict calls (asyncio front); drained when the server stops."""

    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        return c.predict_response(await self._core.predict(*c.predict_call(request)))

    async def StreamPredict(
        self, requests: AsyncIterator[pb.StreamPredictRequest], context: Context
    ) -> AsyncIterator[pb.StreamPredictResponse]:
        answers = self.streams.answer_each(
            requests, "Predict", lambda r: self.Predict(r.request, context)
        )
        async for response in answers:
            yield pb.StreamPredictResponse(response=response)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        models = self._core.versions(request.model)
        start, stop, token = c.page(request.page_token, request.page_size, len(models))
        return pb.ListModelsResponse(
            models=[c.served_model(m) for m in models[start:stop]], next_page_token=token
        )

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: Context
    ) -> pb.GetModelMetadataResponse:
        served = self._core.resolve(request.model, c.selector(request.version))
        return pb.GetModelMetadataResponse(
            served_model=c.served_model(served), model_version=c.model_version(served)
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: Context
    ) -> pb.LoadModelResponse:
        loaded = await self._core.load_model(request.model, c.selector(request.version))
        return pb.LoadModelResponse(served_model=c.served_model(loaded[-1]))

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: Context
    ) -> pb.UnloadModelResponse:
        unloaded = await self._core.unload_model(request.model, request.version)
        return pb.UnloadModelResponse(unloaded=[c.served_model(m) for m in unloaded])

    async def GetModelHealth(
        self, request: pb.GetModelHealthRequest, context: Context
    ) -> pb.GetModelHealthResponse:
        reports = self._core.health(request.model, request.version, c.window(request))
        return pb.GetModelHealthResponse(health=[c.model_health(v, r) for v, r in reports])


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: ServingCore) -> None:
        self._core = core
        self._version = metadata.version("mlbackend")

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: Context
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: Context
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._core.ready)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: Context
    ) -> oip.ModelReadyResponse:
        return oip.ModelReadyResponse(
            ready=self._core.is_ready(request.name, o.selector(request.version))
        )

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name=o.SERVER_NAME, version=self._version, extensions=o.EXTENSIONS
        )

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        served = self._core.resolve(request.name, o.selector(request.version))
        return o.model_metadata(served, self._core.versions(request.name))

    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: Context
    ) -> oip.ModelInferResponse:
        return o.infer_response(request, await self._core.predict(*o.infer_call(request)))

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        return o.repository_index(self._core.available(), self._core.versions(), request.ready)

    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: Context
    ) -> oip.RepositoryModelLoadResponse:
        await self._core.load_model(request.model_name, None)
        return oip.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: Context
    ) -> oip.RepositoryModelUnloadResponse:
        await self._core.unload_model(request.model_name, None)
        return oip.RepositoryModelUnloadResponse()
