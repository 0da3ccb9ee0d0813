"""The registry's gRPC servicer: convert the request, await the core, convert back.

No try/except here: domain errors become status codes in the shared interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from mlbackend.registry.v1 import registry_pb2 as pb
from mlbackend.registry.v1 import registry_pb2_grpc
from mlbackend_registry.core.domain import (
    parse_alias_name,
    parse_attachment_name,
    parse_model_name,
    parse_note_resource,
    parse_version_name,
)
from mlbackend_registry.core.service import RegistryCore
from mlbackend_registry.transport import convert

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _number(name: str, field: str = "name") -> tuple[str, int]:
    model, version = parse_version_name(name, field, number_only=True)
    assert isinstance(version, int)
    return model, version


class RegistryServicer(registry_pb2_grpc.ModelRegistryServiceServicer):
    def __init__(self, core: RegistryCore) -> None:
        self._core = core

    async def CreateRegisteredModel(
        self, request: pb.CreateRegisteredModelRequest, context: Context
    ) -> pb.CreateRegisteredModelResponse:
        m = request.registered_model
        model = await self._core.create_model(
            request.registered_model_id, m.description, dict(m.tags), request.reason
        )
        return pb.CreateRegisteredModelResponse(registered_model=convert.model_to_pb(model))

    async def GetRegisteredModel(
        self, request: pb.GetRegisteredModelRequest, context: Context
    ) -> pb.GetRegisteredModelResponse:
        model = await self._core.get_model(parse_model_name(request.name))
        return pb.GetRegisteredModelResponse(registered_model=convert.model_to_pb(model))

    async def ListRegisteredModels(
        self, request: pb.ListRegisteredModelsRequest, context: Context
    ) -> pb.ListRegisteredModelsResponse:
        page = await self._core.list_models(
            request.page_size, request.page_token, request.name_prefix, dict(request.tags)
        )
        return pb.ListRegisteredModelsResponse(
            registered_models=[convert.model_to_pb(m) for m in page.items],
            next_page_token=page.next_token,
        )

    async def UpdateRegisteredModel(
        self, request: pb.UpdateRegisteredModelRequest, context: Context
    ) -> pb.UpdateRegisteredModelResponse:
        m = request.registered_model
        description, tags = convert.update_fields(request.update_mask, "update_mask.paths")
        model = await self._core.update_model(
            parse_model_name(m.name, "registered_model.name"),
            m.description if description else None,
            dict(m.tags) if tags else None,
            request.reason,
        )
        return pb.UpdateRegisteredModelResponse(registered_model=convert.model_to_pb(model))

    async def DeleteRegisteredModel(
        self, request: pb.DeleteRegisteredModelRequest, context: Context
    ) -> pb.DeleteRegisteredModelResponse:
        await self._core.delete_model(parse_model_name(request.name), request.reason)
        return pb.DeleteRegisteredModelResponse()

    async def CreateModelVersion(
        self, request_iterator: AsyncIterator[pb.CreateModelVersionRequest], context: Context
    ) -> pb.CreateModelVersionResponse:
        spec, chunks = await convert.upload_spec(request_iterator)
        version = await self._core.create_version(spec, chunks)
        return pb.CreateModelVersionResponse(model_version=convert.version_to_pb(version))

    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: Context
    ) -> pb.GetModelVersionResponse:
        version = await self._core.get_version(*parse_version_name(request.name))
        return pb.GetModelVersionResponse(model_version=convert.version_to_pb(version))

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: Context
    ) -> pb.ListModelVersionsResponse:
        page = await self._core.list_versions(
            parse_model_name(request.parent, "parent"),
            request.page_size,
            request.page_token,
            dict(request.tags),
            convert.stage(request.stage, "stage", allow_unspecified=True),
            convert.status(request.status, "status"),
        )
        return pb.ListModelVersionsResponse(
            model_versions=[convert.version_to_pb(v) for v in page.items],
            next_page_token=page.next_token,
        )

    async def UpdateModelVersion(
        self, request: pb.UpdateModelVersionRequest, context: Context
    ) -> pb.UpdateModelVersionResponse:
        v = request.model_version
        description, tags = convert.update_fields(request.update_mask, "update_mask.paths")
        version = await self._core.update_version(
            *_number(v.name, "model_version.name"),
            v.description if description else None,
            dict(v.tags) if tags else None,
            request.reason,
        )
        return pb.UpdateModelVersionResponse(model_version=convert.version_to_pb(version))

    async def DeleteModelVersion(
        self, request: pb.DeleteModelVersionRequest, context: Context
    ) -> pb.DeleteModelVersionResponse:
        await self._core.delete_version(*_number(request.name), request.reason)
        return pb.DeleteModelVersionResponse()

    async def DownloadModelArtifact(
        self, request: pb.DownloadModelArtifactRequest, context: Context
    ) -> AsyncIterator[pb.DownloadModelArtifactResponse]:
        model, ref = parse_version_name(request.name)
        version, chunks = await self._core.open_artifact(model, ref, request.chunk_size_bytes)
        yield convert.download_header(version)
        async for chunk in chunks:
            yield pb.DownloadModelArtifactResponse(chunk=chunk)

    async def UploadAttachment(
        self, request_iterator: AsyncIterator[pb.UploadAttachmentRequest], context: Context
    ) -> pb.UploadAttachmentResponse:
        spec, chunks = await convert.attachment_spec(request_iterator)
        attachment = await self._core.upload_attachment(spec, chunks)
        return pb.UploadAttachmentResponse(attachment=convert.attachment_to_pb(attachment))

    async def DownloadAttachment(
        self, request: pb.DownloadAttachmentRequest, context: Context
    ) -> AsyncIterator[pb.DownloadAttachmentResponse]:
        attachment, chunks = await self._core.open_attachment(*parse_attachment_name(request.name))
        yield pb.DownloadAttachmentResponse(attachment=convert.attachment_to_pb(attachment))
        async for chunk in chunks:
            yield pb.DownloadAttachmentResponse(chunk=chunk)

    async def ListAttachments(
        self, request: pb.ListAttachmentsRequest, context: Context
    ) -> pb.ListAttachmentsResponse:
        page = await self._core.list_attachments(
            *_number(request.parent, "parent"), request.page_size, request.page_token
        )
        return pb.ListAttachmentsResponse(
            attachments=[convert.attachment_to_pb(a) for a in page.items],
            next_page_token=page.next_token,
        )

    async def SetAlias(self, request: pb.SetAliasRequest, context: Context) -> pb.SetAliasResponse:
        model = parse_model_name(request.parent, "parent")
        alias = await self._core.set_alias(
            model,
            parse_alias_name(f"{request.parent}/aliases/{request.alias}", "alias")[1],
            request.version,
            request.expected_current_version
            if request.HasField("expected_current_version")
            else None,
            request.reason,
        )
        return pb.SetAliasResponse(alias=convert.alias_to_pb(alias))

    async def DeleteAlias(
        self, request: pb.DeleteAliasRequest, context: Context
    ) -> pb.DeleteAliasResponse:
        await self._core.delete_alias(*parse_alias_name(request.name), request.reason)
        return pb.DeleteAliasResponse()

    async def RollbackAlias(
        self, request: pb.RollbackAliasRequest, context: Context
    ) -> pb.RollbackAliasResponse:
        alias = await self._core.rollback_alias(*parse_alias_name(request.name), request.reason)
        return pb.RollbackAliasResponse(alias=convert.alias_to_pb(alias))

    async def TransitionStage(
        self, request: pb.TransitionStageRequest, context: Context
    ) -> pb.TransitionStageResponse:
        stage = convert.stage(request.stage, "stage", allow_unspecified=False)
        assert stage is not None
        version = await self._core.transition_stage(
            *_number(request.name), stage, request.archive_existing, request.reason
        )
        return pb.TransitionStageResponse(model_version=convert.version_to_pb(version))

    async def CreateAuditNote(
        self, request: pb.CreateAuditNoteRequest, context: Context
    ) -> pb.CreateAuditNoteResponse:
        model, version = parse_note_resource(request.resource)
        event = await self._core.create_note(model, version, request.reason)
        return pb.CreateAuditNoteResponse(audit_event=convert.audit_to_pb(event))

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Context
    ) -> pb.ListAuditEventsResponse:
        page = await self._core.list_audit(
            parse_model_name(request.parent, "parent") if request.parent else None,
            request.page_size,
            request.page_token,
            convert.action(request.action),
            convert.time_or_none(request, "start_time"),
            convert.time_or_none(request, "end_time"),
        )
        return pb.ListAuditEventsResponse(
            audit_events=[convert.audit_to_pb(e) for e in page.items],
            next_page_token=page.next_token,
        )

    async def Watch(
        self, request: pb.WatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchResponse]:
        model = parse_model_name(request.parent, "parent") if request.parent else None
        async for event in self._core.watch(model, request.start_revision):
            yield convert.watch_to_pb(event)
