"""The registry's use cases: validate, call the store in a worker thread, keep blobs in
step with the metadata, and wake Watch subscribers after each commit."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from mlbackend_registry.core.domain import (
    MAX_DESCRIPTION,
    Action,
    Alias,
    ArtifactFormat,
    Attachment,
    AuditEvent,
    AuditInfo,
    ModelVersion,
    RegisteredModel,
    Stage,
    VersionDraft,
    VersionRef,
    VersionStatus,
    WatchEvent,
    WatchKind,
    check_attachment_id,
    check_model_id,
    check_sha256,
    description_violations,
    now,
    page_size,
    raise_if,
    resource_name,
    tag_violations,
)
from mlbackend_registry.stores.artifacts import CHUNK, ArtifactStore, Upload
from mlbackend_registry.stores.base import RegistryStore
from mlbackend_runtime.errors import DomainError, FieldViolation, InvalidInput

logger = logging.getLogger("mlbackend.registry")

T = TypeVar("T")

Whoami = Callable[[], tuple[str, str]]
"""Returns (caller identity, request id) of the call being served."""

ArtifactValidator = Callable[[Path, ArtifactFormat], None]
"""Checks a received artifact file before it is committed (e.g. skops loads with trusted
types only); raises ``InvalidInput`` naming the offending type or defect."""

MAX_ATTACHMENT_BYTES = 64 * 1024 * 1024
SKOPS_MAGIC = b"PK\x03\x04"  # a skops file is a zip archive


@dataclass(frozen=True)
class UploadSpec:
    """The first message of a version upload, converted."""

    model: str
    draft: VersionDraft
    sha256: str
    size_bytes: int
    create_model: bool = False
    reason: str = ""


@dataclass(frozen=True)
class AttachmentSpec:
    model: str
    version: int
    name: str
    content_type: str
    sha256: str
    size_bytes: int
    description: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Page:
    """A page of results and the token for the next one (empty on the last)."""

    items: list[Any]
    next_token: str


def _encode_token(key: Any, filters: Any) -> str:
    raw = json.dumps({"k": key, "f": _fingerprint(filters)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _fingerprint(filters: Any) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def _decode_token(token: str, filters: Any) -> Any:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        key, fingerprint = data["k"], data["f"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidInput.field(
            "page_token", "is not a token returned by a previous call"
        ) from None
    if fingerprint != _fingerprint(filters):
        raise InvalidInput.field("page_token", "was issued for a request with other filters")
    return key


DRAIN_LIMIT = 16 * 1024 * 1024


async def drain(chunks: AsyncIterator[bytes], limit: int = DRAIN_LIMIT) -> None:
    """Read what a rejected upload still sends (up to ``limit`` bytes) before failing it.

    A gRPC server that ends a client-streaming call while the client is still writing
    makes the client see ``INTERNAL: Internal error from Core`` now and then (about 1 in
    300 calls here) instead of the status the server sent; reading the rest first lets the
    real error through. Beyond ``limit`` we stop waiting and accept that risk.
    """
    drained = 0
    with contextlib.suppress(Exception):
        async for chunk in chunks:
            drained += len(chunk)
            if drained > limit:
                return


class RegistryCore:
    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        *,
        allow_pickle: bool = False,
        whoami: Whoami = lambda: ("anonymous", ""),
        validate: ArtifactValidator | None = None,
        heartbeat_seconds: float = 10.0,
        poll_seconds: float | None = None,
    ) -> None:
        # Commits in this process wake subscribers at once; with poll_seconds they also
        # re-read the change log that often, to see commits of other replicas sharing
        # the database (PostgreSQL). LISTEN/NOTIFY would make that immediate.
        self._poll = poll_seconds
        self._validate = validate
        self._store = store
        self._artifacts = artifacts
        self._allow_pickle = allow_pickle
        self._whoami = whoami
        self._heartbeat = heartbeat_seconds
        # Held while a blob is renamed into place and its version committed, and while
        # unreferenced blobs are removed, so a removal never races a new reference.
        self._blob_lock = asyncio.Lock()
        self._tick = asyncio.Event()

    # ---- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Apply migrations and drop what a crash left behind (temp files, orphan blobs)."""
        await asyncio.to_thread(self._store.migrate)
        referenced = await asyncio.to_thread(self._store.referenced_digests)
        removed = await asyncio.to_thread(self._artifacts.collect_garbage, referenced)
        if removed:
            logger.info("removed %d leftover artifact file(s)", len(removed))

    async def close(self) -> None:
        await asyncio.to_thread(self._store.close)

    def _audit(self, reason: str) -> AuditInfo:
        if len(reason) > MAX_DESCRIPTION:
            raise InvalidInput.field("reason", f"at most {MAX_DESCRIPTION} characters")
        identity, request_id = self._whoami()
        return AuditInfo(identity, reason, request_id)

    async def _write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        result = await asyncio.to_thread(fn, *args, **kwargs)
        self._notify()
        return result

    def _notify(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # ---- registered models ------------------------------------------------------------

    async def create_model(
        self, model_id: str, description: str, tags: dict[str, str], reason: str
    ) -> RegisteredModel:
        check_model_id(model_id, "registered_model_id")
        raise_if(
            description_violations(description, "registered_model.description")
            + tag_violations(tags, "registered_model.tags"),
            "registered model",
        )
        audit = self._audit(reason)
        model = RegisteredModel(
            name=model_id, description=description, tags=dict(tags), created_by=audit.actor
        )
        return await self._write(self._store.create_model, model, audit)

    async def get_model(self, name: str) -> RegisteredModel:
        return await asyncio.to_thread(self._store.get_model, name)

    async def list_models(
        self, size: int, token: str, name_prefix: str, tags: dict[str, str]
    ) -> Page:
        limit = page_size(size)
        filters = {"prefix": name_prefix, "tags": tags}
        after = _decode_token(token, filters)
        found = await asyncio.to_thread(
            self._store.list_models, name_prefix, tags, after, limit + 1
        )
        more = len(found) > limit
        items = found[:limit]
        return Page(items, _encode_token(items[-1].name, filters) if more else "")

    async def update_model(
        self,
        name: str,
        description: str | None,
        tags: dict[str, str] | None,
        reason: str,
    ) -> RegisteredModel:
        raise_if(
            description_violations(description or "", "registered_model.description")
            + tag_violations(tags or {}, "registered_model.tags"),
            "registered model",
        )
        return await self._write(
            self._store.update_model, name, description, tags, self._audit(reason)
        )

    async def delete_model(self, name: str, reason: str) -> None:
        async with self._blob_lock:
            digests = await self._write(self._store.delete_model, name, self._audit(reason))
            await self._drop_unreferenced(digests)

    async def _drop_unreferenced(self, digests: set[str]) -> None:
        for digest in await asyncio.to_thread(self._store.unreferenced, digests):
            await asyncio.to_thread(self._artifacts.remove, digest)

    # ---- versions ---------------------------------------------------------------------

    def _check_upload(self, spec: UploadSpec) -> None:
        problems: list[FieldViolation] = []
        prefix = "metadata.model_version"
        if spec.draft.format is ArtifactFormat.PICKLE and not self._allow_pickle:
            problems.append(
                FieldViolation(
                    f"{prefix}.artifact.format",
                    "pickle artifacts can run arbitrary code and are refused unless the "
                    "registry runs with --allow-pickle; use skops or onnx",
                )
            )
        try:
            check_sha256(spec.sha256, "metadata.artifact_sha256")
        except InvalidInput as exc:
            problems.extend(exc.violations)
        if spec.size_bytes < 0:
            problems.append(FieldViolation("metadata.artifact_size_bytes", "must not be negative"))
        problems += description_violations(spec.draft.description, f"{prefix}.description")
        problems += tag_violations(spec.draft.tags, f"{prefix}.tags")
        problems += tag_violations(spec.draft.params, f"{prefix}.params")
        raise_if(problems, "model version upload")

    async def create_version(self, spec: UploadSpec, chunks: AsyncIterator[bytes]) -> ModelVersion:
        try:
            return await self._create_version(spec, chunks)
        except DomainError:
            await drain(chunks)
            raise

    async def _create_version(self, spec: UploadSpec, chunks: AsyncIterator[bytes]) -> ModelVersion:
        self._check_upload(spec)
        if not spec.create_model:
            await self.get_model(spec.model)  # fail fast, before any byte is stored
        upload = await asyncio.to_thread(self._artifacts.new_upload)
        try:
            await self._receive(upload, chunks, spec.size_bytes, "metadata.artifact_size_bytes")
            self._verify(upload, spec)
            await asyncio.to_thread(upload.finish)
            if self._validate is not None:
                await asyncio.to_thread(self._validate, upload.path, spec.draft.format)
            async with self._blob_lock:
                digest = await asyncio.to_thread(self._artifacts.commit, upload)
                try:
                    return await self._write(
                        self._store.create_version,
                        spec.model,
                        spec.draft,
                        digest,
                        upload.size,
                        self._audit(spec.reason),
                        create_model=spec.create_model,
                    )
                except BaseException:
                    await self._drop_unreferenced({digest})
                    raise
        finally:
            await asyncio.to_thread(upload.discard)

    @staticmethod
    async def _receive(
        upload: Upload, chunks: AsyncIterator[bytes], declared: int, size_field: str
    ) -> None:
        async for chunk in chunks:
            if len(chunk) > CHUNK:
                raise InvalidInput.field("chunk", f"chunks carry at most {CHUNK} bytes")
            await asyncio.to_thread(upload.write, chunk)
            if declared and upload.size > declared:
                raise InvalidInput.field(
                    size_field, f"more than the declared {declared} bytes arrived"
                )

    def _verify(self, upload: Upload, spec: UploadSpec) -> None:
        if upload.size == 0:
            raise InvalidInput.field("chunk", "the artifact is empty")
        if spec.size_bytes and upload.size != spec.size_bytes:
            raise InvalidInput.field(
                "metadata.artifact_size_bytes",
                f"declared {spec.size_bytes} bytes but received {upload.size}",
            )
        if upload.sha256 != spec.sha256:
            raise InvalidInput.field(
                "metadata.artifact_sha256",
                f"declared {spec.sha256} but the received bytes hash to {upload.sha256}",
            )
        if spec.draft.format is ArtifactFormat.SKOPS and not upload.head.startswith(SKOPS_MAGIC):
            raise InvalidInput.field(
                "metadata.model_version.artifact.format",
                "the artifact is not a skops file (a zip archive)",
            )

    async def get_version(self, model: str, ref: VersionRef) -> ModelVersion:
        return await asyncio.to_thread(self._store.get_version, model, ref)

    async def list_versions(
        self,
        model: str,
        size: int,
        token: str,
        tags: dict[str, str],
        stage: Stage | None,
        status: VersionStatus | None,
    ) -> Page:
        limit = page_size(size)
        filters = {"model": model, "tags": tags, "stage": stage, "status": status}
        before = _decode_token(token, filters)
        if before is not None and not isinstance(before, int):
            raise InvalidInput.field("page_token", "is not a token returned by a previous call")
        found = await asyncio.to_thread(
            self._store.list_versions, model, tags, stage, status, before, limit + 1
        )
        more = len(found) > limit
        items = found[:limit]
        return Page(items, _encode_token(items[-1].version, filters) if more else "")

    async def update_version(
        self,
        model: str,
        version: int,
        description: str | None,
        tags: dict[str, str] | None,
        reason: str,
    ) -> ModelVersion:
        raise_if(
            description_violations(description or "", "model_version.description")
            + tag_violations(tags or {}, "model_version.tags"),
            "model version",
        )
        return await self._write(
            self._store.update_version, model, version, description, tags, self._audit(reason)
        )

    async def delete_version(self, model: str, version: int, reason: str) -> None:
        async with self._blob_lock:
            digests = await self._write(
                self._store.delete_version, model, version, self._audit(reason)
            )
            await self._drop_unreferenced(digests)

    async def open_artifact(
        self, model: str, ref: VersionRef, chunk_size: int
    ) -> tuple[ModelVersion, AsyncIterator[bytes]]:
        if chunk_size < 0:
            raise InvalidInput.field("chunk_size_bytes", "must not be negative")
        version = await self.get_version(model, ref)
        if not self._artifacts.exists(version.sha256):
            raise FileNotFoundError(f"blob {version.sha256} of {resource_name(version)} is missing")
        return version, self._read(version.sha256, min(chunk_size or CHUNK, CHUNK))

    async def _read(self, digest: str, chunk_size: int) -> AsyncIterator[bytes]:
        chunks: Iterator[bytes] = self._artifacts.chunks(digest, chunk_size)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk

    async def transition_stage(
        self, model: str, version: int, stage: Stage, archive_existing: bool, reason: str
    ) -> ModelVersion:
        return await self._write(
            self._store.transition_stage,
            model,
            version,
            stage,
            archive_existing,
            self._audit(reason),
        )

    # ---- aliases ----------------------------------------------------------------------

    async def set_alias(
        self, model: str, alias: str, version: int, expected: int | None, reason: str
    ) -> Alias:
        if version < 1:
            raise InvalidInput.field("version", "version numbers start at 1")
        if expected is not None and expected < 0:
            raise InvalidInput.field("expected_current_version", "must not be negative")
        return await self._write(
            self._store.set_alias, model, alias, version, expected, self._audit(reason)
        )

    async def delete_alias(self, model: str, alias: str, reason: str) -> None:
        await self._write(self._store.delete_alias, model, alias, self._audit(reason))

    async def rollback_alias(self, model: str, alias: str, reason: str) -> Alias:
        return await self._write(self._store.rollback_alias, model, alias, self._audit(reason))

    # ---- attachments ------------------------------------------------------------------

    async def upload_attachment(
        self, spec: AttachmentSpec, chunks: AsyncIterator[bytes]
    ) -> Attachment:
        try:
            return await self._upload_attachment(spec, chunks)
        except DomainError:
            await drain(chunks)
            raise

    async def _upload_attachment(
        self, spec: AttachmentSpec, chunks: AsyncIterator[bytes]
    ) -> Attachment:
        check_attachment_id(spec.name, "metadata.attachment_id")
        check_sha256(spec.sha256, "metadata.sha256")
        raise_if(description_violations(spec.description, "metadata.description"), "attachment")
        if not 0 <= spec.size_bytes <= MAX_ATTACHMENT_BYTES:
            raise InvalidInput.field("metadata.size_bytes", f"must be 0..{MAX_ATTACHMENT_BYTES}")
        await self.get_version(spec.model, spec.version)
        upload = await asyncio.to_thread(self._artifacts.new_upload)
        try:
            await self._receive(
                upload, chunks, spec.size_bytes or MAX_ATTACHMENT_BYTES, "metadata.size_bytes"
            )
            if upload.sha256 != spec.sha256:
                raise InvalidInput.field(
                    "metadata.sha256",
                    f"declared {spec.sha256} but the received bytes hash to {upload.sha256}",
                )
            await asyncio.to_thread(upload.finish)
            audit = self._audit(spec.reason)
            attachment = Attachment(
                spec.model,
                spec.version,
                spec.name,
                spec.content_type,
                upload.sha256,
                upload.size,
                spec.description,
                now(),
                audit.actor,
            )
            async with self._blob_lock:
                digest = await asyncio.to_thread(self._artifacts.commit, upload)
                try:
                    replaced = await self._write(self._store.put_attachment, attachment, audit)
                except BaseException:
                    await self._drop_unreferenced({digest})
                    raise
                await self._drop_unreferenced(replaced - {digest})
            return attachment
        finally:
            await asyncio.to_thread(upload.discard)

    async def open_attachment(
        self, model: str, version: int, name: str
    ) -> tuple[Attachment, AsyncIterator[bytes]]:
        attachment = await asyncio.to_thread(self._store.get_attachment, model, version, name)
        return attachment, self._read(attachment.sha256, CHUNK)

    async def list_attachments(self, model: str, version: int, size: int, token: str) -> Page:
        limit = page_size(size)
        filters = {"model": model, "version": version}
        after = _decode_token(token, filters)
        found = await asyncio.to_thread(
            self._store.list_attachments, model, version, after, limit + 1
        )
        items = found[:limit]
        return Page(items, _encode_token(items[-1].name, filters) if len(found) > limit else "")

    # ---- audit and watch --------------------------------------------------------------

    async def create_note(self, model: str, version: int | None, reason: str) -> AuditEvent:
        if not reason.strip():
            raise InvalidInput.field("reason", "a note needs text")
        return await asyncio.to_thread(self._store.create_note, model, version, self._audit(reason))

    async def list_audit(
        self,
        model: str | None,
        size: int,
        token: str,
        action: Action | None,
        start: datetime | None,
        end: datetime | None,
    ) -> Page:
        limit = page_size(size)
        filters = {"model": model, "action": action, "start": start, "end": end}
        after = _decode_token(token, filters) or 0
        if not isinstance(after, int):
            raise InvalidInput.field("page_token", "is not a token returned by a previous call")
        found: list[AuditEvent] = await asyncio.to_thread(
            self._store.list_audit, model, action, start, end, after, limit + 1
        )
        items = found[:limit]
        more = len(found) > limit
        return Page(items, _encode_token(items[-1].revision, filters) if more else "")

    async def watch(self, model: str | None, start_revision: int) -> AsyncIterator[WatchEvent]:
        """The snapshot (start 0) or the changes after ``start_revision``, then live changes.

        Changes are read from the persisted change log, so a resumed stream misses
        nothing, also across restarts. A commit in this process wakes every subscriber
        at once; commits of other replicas are seen within ``poll_seconds``. A heartbeat
        follows every ``heartbeat_seconds`` without changes.
        """
        if start_revision < 0:
            raise InvalidInput.field("start_revision", "must not be negative")
        if start_revision == 0:
            snapshot = await asyncio.to_thread(self._store.snapshot, model)
            resources: list[RegisteredModel | ModelVersion | Alias] = [
                *snapshot.models,
                *snapshot.versions,
                *snapshot.aliases,
            ]
            for resource in resources:
                yield WatchEvent(
                    "snapshot",
                    snapshot.revision,
                    resource.updated_at,
                    resource_name(resource),
                    resource,
                )
            yield WatchEvent("snapshot_complete", snapshot.revision, now())
            cursor = snapshot.revision
        else:
            head = await asyncio.to_thread(self._store.head_revision)
            if start_revision > head:
                raise InvalidInput.field(
                    "start_revision", f"is ahead of the registry's latest revision {head}"
                )
            cursor = start_revision
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            tick = self._tick  # taken before reading, so no wake-up is missed
            batch = await asyncio.to_thread(self._store.changes, model, cursor, 500)
            for change in batch:
                kind: WatchKind = "deleted" if change.state is None else "upserted"
                yield WatchEvent(kind, change.revision, change.time, change.resource, change.state)
                cursor = change.revision
            if batch:
                quiet_since = loop.time()
                continue
            until_heartbeat = quiet_since + self._heartbeat - loop.time()
            if until_heartbeat <= 0:
                quiet_since = loop.time()
                yield WatchEvent("heartbeat", cursor, now())
                continue
            wait = until_heartbeat if self._poll is None else min(self._poll, until_heartbeat)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), wait)
