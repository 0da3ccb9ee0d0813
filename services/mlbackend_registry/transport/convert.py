"""Converters between registry messages and domain types. The only place that knows both."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2 as pb
from mlbackend_registry.core.domain import (
    Action,
    Alias,
    ArtifactFormat,
    Attachment,
    AuditEvent,
    Json,
    ModelVersion,
    RegisteredModel,
    Stage,
    VersionDraft,
    VersionStatus,
    WatchEvent,
    alias_resource,
    attachment_resource,
    model_resource,
    parse_model_name,
    parse_version_name,
    version_resource,
)
from mlbackend_registry.core.service import AttachmentSpec, UploadSpec, drain
from mlbackend_runtime.errors import DomainError, InvalidInput
from mlbackend_runtime.received import time_at

_FORMATS = {
    common_pb2.ARTIFACT_FORMAT_SKOPS: ArtifactFormat.SKOPS,
    common_pb2.ARTIFACT_FORMAT_ONNX: ArtifactFormat.ONNX,
    common_pb2.ARTIFACT_FORMAT_PICKLE: ArtifactFormat.PICKLE,
}
_FORMATS_PB = {v: k for k, v in _FORMATS.items()}
_STAGES = {
    pb.MODEL_STAGE_NONE: Stage.NONE,
    pb.MODEL_STAGE_STAGING: Stage.STAGING,
    pb.MODEL_STAGE_PRODUCTION: Stage.PRODUCTION,
    pb.MODEL_STAGE_ARCHIVED: Stage.ARCHIVED,
}
_STAGES_PB = {v: k for k, v in _STAGES.items()}
_STATUSES = {
    pb.MODEL_VERSION_STATUS_PENDING: VersionStatus.PENDING,
    pb.MODEL_VERSION_STATUS_READY: VersionStatus.READY,
    pb.MODEL_VERSION_STATUS_FAILED: VersionStatus.FAILED,
}
_STATUSES_PB = {v: k for k, v in _STATUSES.items()}
_WATCH_TYPES = {
    "snapshot": pb.WATCH_EVENT_TYPE_SNAPSHOT,
    "snapshot_complete": pb.WATCH_EVENT_TYPE_SNAPSHOT_COMPLETE,
    "upserted": pb.WATCH_EVENT_TYPE_UPSERTED,
    "deleted": pb.WATCH_EVENT_TYPE_DELETED,
    "heartbeat": pb.WATCH_EVENT_TYPE_HEARTBEAT,
}
UPDATABLE = ("description", "tags")
T = TypeVar("T")


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _json(message: Message) -> Json:
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _parse(data: Json, message: Message, field: str) -> None:
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as exc:  # only if a stored value predates a contract change
        raise InvalidInput.field(field, str(exc)) from None


def _struct(data: Json | None) -> struct_pb2.Struct | None:
    if data is None:
        return None
    value = struct_pb2.Struct()
    value.update(data)
    return value


# ---- to messages ----------------------------------------------------------------------


def model_to_pb(model: RegisteredModel) -> pb.RegisteredModel:
    return pb.RegisteredModel(
        name=model_resource(model.name),
        description=model.description,
        tags=model.tags,
        aliases=model.aliases,
        latest_version=model.latest_version,
        create_time=_ts(model.created_at),
        update_time=_ts(model.updated_at),
        created_by=model.created_by,
    )


def version_to_pb(version: ModelVersion) -> pb.ModelVersion:
    draft = version.draft
    message = pb.ModelVersion(
        name=version_resource(version.model, version.version),
        version=version.version,
        status=_STATUSES_PB[version.status],
        status_reason=version.status_reason,
        artifact=pb.Artifact(
            format=_FORMATS_PB[draft.format], sha256=version.sha256, size_bytes=version.size_bytes
        ),
        framework=pb.Framework(name=draft.framework_name, version=draft.framework_version),
        feature_refs=draft.feature_refs,
        feature_service=draft.feature_service,
        metrics=draft.metrics,
        params=draft.params,
        tags=draft.tags,
        description=draft.description,
        stage=_STAGES_PB[version.stage],
        aliases=version.aliases,
        attachments=version.attachments,
        create_time=_ts(version.created_at),
        update_time=_ts(version.updated_at),
        created_by=version.created_by,
    )
    _parse(draft.signature, message.signature, "signature")
    _parse(draft.output, message.output, "output")
    _parse(draft.lineage, message.lineage, "lineage")
    _parse(draft.baseline_statistics, message.baseline_statistics, "baseline_statistics")
    for row in draft.input_example:
        _parse(row, message.input_example.add(), "input_example")
    return message


def alias_to_pb(alias: Alias) -> pb.ModelAlias:
    return pb.ModelAlias(
        name=alias_resource(alias.model, alias.alias),
        alias=alias.alias,
        version=alias.version,
        previous_version=alias.previous_version,
        update_time=_ts(alias.updated_at),
        updated_by=alias.updated_by,
    )


def attachment_to_pb(attachment: Attachment) -> pb.Attachment:
    a = attachment
    return pb.Attachment(
        name=attachment_resource(a.model, a.version, a.name),
        content_type=a.content_type,
        sha256=a.sha256,
        size_bytes=a.size_bytes,
        description=a.description,
        create_time=_ts(a.created_at),
        created_by=a.created_by,
    )


def audit_to_pb(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        revision=event.revision,
        event_time=_ts(event.time),
        actor=event.actor,
        action=pb.AuditAction.Value(f"AUDIT_ACTION_{event.action.value}"),
        resource=event.resource,
        before=_struct(event.before),
        after=_struct(event.after),
        reason=event.reason,
        request_id=event.request_id,
    )


def watch_to_pb(event: WatchEvent) -> pb.WatchResponse:
    message = pb.WatchResponse(
        type=_WATCH_TYPES[event.kind],
        revision=event.revision,
        event_time=_ts(event.time),
        resource=event.resource,
    )
    state = event.state
    if isinstance(state, RegisteredModel):
        message.registered_model.CopyFrom(model_to_pb(state))
    elif isinstance(state, ModelVersion):
        message.model_version.CopyFrom(version_to_pb(state))
    elif isinstance(state, Alias):
        message.alias.CopyFrom(alias_to_pb(state))
    return message


def download_header(version: ModelVersion) -> pb.DownloadModelArtifactResponse:
    return pb.DownloadModelArtifactResponse(
        header=pb.DownloadModelArtifactResponse.Header(
            model_version=version_resource(version.model, version.version),
            artifact=version_to_pb(version).artifact,
        )
    )


# ---- from messages --------------------------------------------------------------------


def stage(value: int, field: str, *, allow_unspecified: bool) -> Stage | None:
    if value == pb.MODEL_STAGE_UNSPECIFIED and allow_unspecified:
        return None
    if value not in _STAGES:
        raise InvalidInput.field(field, "must be NONE, STAGING, PRODUCTION or ARCHIVED")
    return _STAGES[pb.ModelStage.ValueType(value)]


def status(value: int, field: str) -> VersionStatus | None:
    if value == pb.MODEL_VERSION_STATUS_UNSPECIFIED:
        return None
    if value not in _STATUSES:
        raise InvalidInput.field(field, "unknown status")
    return _STATUSES[pb.ModelVersionStatus.ValueType(value)]


def action(value: int) -> Action | None:
    if value == pb.AUDIT_ACTION_UNSPECIFIED:
        return None
    if value not in pb.AuditAction.values():
        raise InvalidInput.field("action", "unknown audit action")
    return Action(
        pb.AuditAction.Name(pb.AuditAction.ValueType(value)).removeprefix("AUDIT_ACTION_")
    )


def time_or_none(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return time_at(getattr(message, field), field)


def update_fields(mask: FieldMask, field: str) -> tuple[bool, bool]:
    """Which of description/tags an update sets; an empty mask means both."""
    paths = list(mask.paths) or list(UPDATABLE)
    for path in paths:
        if path not in UPDATABLE:
            raise InvalidInput.field(field, f"{path!r} cannot be updated (only description, tags)")
    return "description" in paths, "tags" in paths


def draft(version: pb.ModelVersion, field: str) -> VersionDraft:
    fmt = version.artifact.format
    if fmt not in _FORMATS:
        raise InvalidInput.field(f"{field}.artifact.format", "must be SKOPS, ONNX or PICKLE")
    return VersionDraft(
        format=_FORMATS[fmt],
        framework_name=version.framework.name,
        framework_version=version.framework.version,
        signature=_json(version.signature),
        output=_json(version.output),
        feature_refs=tuple(version.feature_refs),
        feature_service=version.feature_service,
        metrics=dict(version.metrics),
        params=dict(version.params),
        tags=dict(version.tags),
        description=version.description,
        lineage=_json(version.lineage),
        baseline_statistics=_json(version.baseline_statistics),
        input_example=tuple(_json(row) for row in version.input_example),
    )


async def _first_then_chunks(
    requests: AsyncIterator[Any],
) -> tuple[Any, AsyncIterator[bytes]]:
    first = await anext(aiter(requests), None)
    if first is None:
        raise InvalidInput.field("metadata", "the stream is empty: send the metadata first")
    if first.WhichOneof("payload") != "metadata":
        await drain(_payloads(requests))
        raise InvalidInput.field("metadata", "the first message must carry the metadata")

    async def chunks() -> AsyncIterator[bytes]:
        async for request in requests:
            if request.WhichOneof("payload") != "chunk":
                raise InvalidInput.field("metadata", "must be sent once, in the first message")
            yield request.chunk

    return first.metadata, chunks()


async def _payloads(requests: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request.chunk


async def _or_drain(chunks: AsyncIterator[bytes], build: Callable[[], T]) -> T:
    """``build()``, or — if the metadata is invalid — drain the upload, then raise."""
    try:
        return build()
    except DomainError:
        await drain(chunks)
        raise


async def upload_spec(
    requests: AsyncIterator[pb.CreateModelVersionRequest],
) -> tuple[UploadSpec, AsyncIterator[bytes]]:
    meta, chunks = await _first_then_chunks(requests)
    spec = await _or_drain(
        chunks,
        lambda: UploadSpec(
            model=parse_model_name(meta.parent, "metadata.parent"),
            draft=draft(meta.model_version, "metadata.model_version"),
            sha256=meta.artifact_sha256,
            size_bytes=meta.artifact_size_bytes,
            create_model=meta.create_registered_model,
            reason=meta.reason,
        ),
    )
    return spec, chunks


async def attachment_spec(
    requests: AsyncIterator[pb.UploadAttachmentRequest],
) -> tuple[AttachmentSpec, AsyncIterator[bytes]]:
    meta, chunks = await _first_then_chunks(requests)

    def build() -> AttachmentSpec:
        model, version = parse_version_name(meta.parent, "metadata.parent", number_only=True)
        assert isinstance(version, int)
        return AttachmentSpec(
            model=model,
            version=version,
            name=meta.attachment_id,
            content_type=meta.content_type or "application/octet-stream",
            sha256=meta.sha256,
            size_bytes=meta.size_bytes,
            description=meta.description,
            reason=meta.reason,
        )

    return await _or_drain(chunks, build), chunks
