"""gRPC servicer of FeatureStoreService: convert, await the core, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from mlbackend.features.v1 import features_pb2 as pb
from mlbackend.features.v1 import features_pb2_grpc
from mlbackend_features.core.model import Actor, OutputColumn
from mlbackend_features.core.service import FeatureStore
from mlbackend_features.transport import arrow, convert
from mlbackend_runtime.auth import Role
from mlbackend_runtime.interceptor import caller
from mlbackend_runtime.streamed import AioStreams

Context = grpc.aio.ServicerContext[Any, Any]


def _actor() -> Actor:
    who = caller()
    return Actor(who.identity, who.role >= Role.ADMIN)


class FeatureStoreServicer(features_pb2_grpc.FeatureStoreServiceServicer):
    def __init__(self, store: FeatureStore) -> None:
        self._store = store
        self.streams = AioStreams()
        """The open StreamOnlineFeatures calls (asyncio front); drained when the server
        stops."""

    async def ApplyDefinitions(
        self, request: pb.ApplyDefinitionsRequest, context: Context
    ) -> pb.ApplyDefinitionsResponse:
        changes = await self._store.apply(
            convert.definition_set(request), force=request.force, dry_run=request.dry_run,
            actor=_actor(),
        )  # fmt: skip
        return convert.changes_pb(changes)

    async def GetEntity(
        self, request: pb.GetEntityRequest, context: Context
    ) -> pb.GetEntityResponse:
        entity = await self._store.fresh(lambda: self._store.entity(request.name))
        return pb.GetEntityResponse(entity=convert.entity_pb(entity))

    async def ListEntities(
        self, request: pb.ListEntitiesRequest, context: Context
    ) -> pb.ListEntitiesResponse:
        items, token = self._store.list_entities(request.page_size, request.page_token)
        return pb.ListEntitiesResponse(
            entities=[convert.entity_pb(e) for e in items], next_page_token=token
        )

    async def GetFeatureView(
        self, request: pb.GetFeatureViewRequest, context: Context
    ) -> pb.GetFeatureViewResponse:
        view = await self._store.fresh(lambda: self._store.feature_view(request.name))
        return pb.GetFeatureViewResponse(feature_view=convert.feature_view_pb(view))

    async def ListFeatureViews(
        self, request: pb.ListFeatureViewsRequest, context: Context
    ) -> pb.ListFeatureViewsResponse:
        items, token = self._store.list_feature_views(
            request.page_size, request.page_token, request.entity
        )
        return pb.ListFeatureViewsResponse(
            feature_views=[convert.feature_view_pb(v) for v in items], next_page_token=token
        )

    async def GetFeatureService(
        self, request: pb.GetFeatureServiceRequest, context: Context
    ) -> pb.GetFeatureServiceResponse:
        service = await self._store.fresh(lambda: self._store.feature_service(request.name))
        return pb.GetFeatureServiceResponse(feature_service=convert.feature_service_pb(service))

    async def ListFeatureServices(
        self, request: pb.ListFeatureServicesRequest, context: Context
    ) -> pb.ListFeatureServicesResponse:
        items, token = self._store.list_feature_services(
            request.page_size, request.page_token, request.name, request.all_versions
        )
        return pb.ListFeatureServicesResponse(
            feature_services=[convert.feature_service_pb(s) for s in items], next_page_token=token
        )

    async def WriteFeatures(
        self, request: pb.WriteFeaturesRequest, context: Context
    ) -> pb.WriteFeaturesResponse:
        ack = await self._store.write(convert.write_batch(request.batch))
        return convert.write_ack_pb(ack)

    async def PushFeatures(
        self, request_iterator: AsyncIterator[pb.PushFeaturesRequest], context: Context
    ) -> AsyncIterator[pb.PushFeaturesResponse]:
        async for ack in self._store.push(convert.push_batches(request_iterator)):
            yield convert.push_ack_pb(ack)

    async def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: Context
    ) -> pb.GetOnlineFeaturesResponse:
        result = await self._store.read_online(convert.online_query(request))
        return convert.online_result_pb(result)

    async def StreamOnlineFeatures(
        self, requests: AsyncIterator[pb.StreamOnlineFeaturesRequest], context: Context
    ) -> AsyncIterator[pb.StreamOnlineFeaturesResponse]:
        answers = self.streams.answer_each(
            requests, "GetOnlineFeatures", lambda r: self.GetOnlineFeatures(r.read, context)
        )
        async for read in answers:
            yield pb.StreamOnlineFeaturesResponse(read=read)

    async def GetHistoricalFeatures(
        self, request: pb.GetHistoricalFeaturesRequest, context: Context
    ) -> AsyncIterator[pb.GetHistoricalFeaturesResponse]:
        if request.entity_table:
            inputs = await self._store.request_input_names(
                list(request.feature_refs), request.feature_service
            )
            query = arrow.historical_query(request, inputs)
        else:
            query = convert.historical_query(request)
        as_arrow = arrow.wants_arrow(request)
        schema: tuple[OutputColumn, ...] = ()
        async for chunk in self._store.read_historical(query, stored=as_arrow):
            if as_arrow:
                schema = chunk.schema or schema  # only the first chunk carries it
                for message in arrow.chunk_pbs(chunk, schema):
                    yield message
            else:
                yield convert.historical_chunk_pb(chunk)

    async def Materialize(
        self, request: pb.MaterializeRequest, context: Context
    ) -> AsyncIterator[pb.MaterializeResponse]:
        async for progress in self._store.materialize(*convert.materialize_args(request)):
            yield convert.progress_pb(progress)

    async def GetFeatureStatistics(
        self, request: pb.GetFeatureStatisticsRequest, context: Context
    ) -> pb.GetFeatureStatisticsResponse:
        stats = await self._store.statistics(*convert.statistics_args(request))
        return convert.statistics_pb(stats)
