"""The metadata store interface every engine implements.

Methods are synchronous (the core runs them in worker threads) and each mutating
method is one transaction that also appends its audit event(s), which double as the
persisted change log Watch reads. Implementations serialize writers, so revisions
are assigned in commit order and version numbers have no gaps.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from mlbackend_registry.core.domain import (
    Action,
    Alias,
    Attachment,
    AuditEvent,
    AuditInfo,
    Change,
    ModelVersion,
    RegisteredModel,
    Snapshot,
    Stage,
    VersionDraft,
    VersionRef,
    VersionStatus,
)


class RegistryStore(Protocol):
    def migrate(self) -> None:
        """Create or upgrade the schema (versioned migrations, idempotent)."""

    def close(self) -> None: ...

    def head_revision(self) -> int:
        """The revision of the last committed change (0 when empty)."""

    # registered models
    def create_model(self, model: RegisteredModel, audit: AuditInfo) -> RegisteredModel: ...
    def get_model(self, name: str) -> RegisteredModel: ...
    def list_models(
        self, name_prefix: str, tags: dict[str, str], after: str | None, limit: int
    ) -> list[RegisteredModel]:
        """Models ordered by name, strictly after ``after``, at most ``limit``."""

    def update_model(
        self, name: str, description: str | None, tags: dict[str, str] | None, audit: AuditInfo
    ) -> RegisteredModel: ...
    def delete_model(self, name: str, audit: AuditInfo) -> set[str]:
        """Deletes the model and its versions; returns the digests they referenced."""

    # versions
    def create_version(
        self,
        model: str,
        draft: VersionDraft,
        sha256: str,
        size_bytes: int,
        audit: AuditInfo,
        *,
        create_model: bool,
    ) -> ModelVersion:
        """Allocates the next number and inserts the READY version, in one transaction."""

    def get_version(self, model: str, ref: VersionRef) -> ModelVersion: ...
    def list_versions(
        self,
        model: str,
        tags: dict[str, str],
        stage: Stage | None,
        status: VersionStatus | None,
        before: int | None,
        limit: int,
    ) -> list[ModelVersion]:
        """Versions newest first, numbers strictly below ``before``, at most ``limit``."""

    def update_version(
        self,
        model: str,
        version: int,
        description: str | None,
        tags: dict[str, str] | None,
        audit: AuditInfo,
    ) -> ModelVersion: ...
    def delete_version(self, model: str, version: int, audit: AuditInfo) -> set[str]:
        """Deletes the version and its attachments; returns the digests they referenced."""

    def transition_stage(
        self, model: str, version: int, stage: Stage, archive_existing: bool, audit: AuditInfo
    ) -> ModelVersion: ...

    # aliases
    def set_alias(
        self, model: str, alias: str, version: int, expected: int | None, audit: AuditInfo
    ) -> Alias: ...
    def delete_alias(self, model: str, alias: str, audit: AuditInfo) -> None: ...
    def rollback_alias(self, model: str, alias: str, audit: AuditInfo) -> Alias: ...

    # attachments
    def put_attachment(self, attachment: Attachment, audit: AuditInfo) -> set[str]:
        """Stores or replaces an attachment; returns the digest it replaced, if any."""

    def get_attachment(self, model: str, version: int, name: str) -> Attachment: ...
    def list_attachments(
        self, model: str, version: int, after: str | None, limit: int
    ) -> list[Attachment]: ...

    # audit log, change log, blobs
    def create_note(self, model: str, version: int | None, audit: AuditInfo) -> AuditEvent:
        """Records a NOTE about the model or one version (which must exist)."""

    def list_audit(
        self,
        model: str | None,
        action: Action | None,
        start: datetime | None,
        end: datetime | None,
        after_revision: int,
        limit: int,
    ) -> list[AuditEvent]: ...
    def changes(self, model: str | None, after_revision: int, limit: int) -> list[Change]: ...
    def snapshot(self, model: str | None) -> Snapshot: ...
    def unreferenced(self, digests: Iterable[str]) -> set[str]:
        """Those of ``digests`` no version or attachment references any more."""

    def referenced_digests(self) -> set[str]: ...
