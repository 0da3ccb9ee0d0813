"""Domain types of the registry and the rules that need no storage to decide.

Rich metadata whose shape belongs to the contract (input signature, output spec,
lineage, baseline statistics, input example) travels as JSON objects: the core
stores and returns them unchanged, so only ``transport/convert.py`` knows their
schema.
"""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from mlbackend_runtime.errors import FailedPrecondition, FieldViolation, InvalidInput

Json = dict[str, Any]


class Stage(enum.StrEnum):
    NONE = "NONE"
    STAGING = "STAGING"
    PRODUCTION = "PRODUCTION"
    ARCHIVED = "ARCHIVED"


class VersionStatus(enum.StrEnum):
    PENDING = "PENDING"
    READY = "READY"
    FAILED = "FAILED"


class ArtifactFormat(enum.StrEnum):
    SKOPS = "SKOPS"
    ONNX = "ONNX"
    PICKLE = "PICKLE"


class Action(enum.StrEnum):
    """What an audit event records; also the kind of change Watch reports."""

    MODEL_CREATED = "MODEL_CREATED"
    MODEL_UPDATED = "MODEL_UPDATED"
    MODEL_DELETED = "MODEL_DELETED"
    VERSION_CREATED = "VERSION_CREATED"
    VERSION_UPDATED = "VERSION_UPDATED"
    VERSION_DELETED = "VERSION_DELETED"
    STAGE_CHANGED = "STAGE_CHANGED"
    ALIAS_SET = "ALIAS_SET"
    ALIAS_DELETED = "ALIAS_DELETED"
    ALIAS_ROLLED_BACK = "ALIAS_ROLLED_BACK"
    ATTACHMENT_UPLOADED = "ATTACHMENT_UPLOADED"
    NOTE = "NOTE"


ResourceKind = Literal["model", "version", "alias", "attachment"]

DELETIONS = frozenset({Action.MODEL_DELETED, Action.VERSION_DELETED, Action.ALIAS_DELETED})


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    """The model id (``{model}`` of ``models/{model}``)."""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    latest_version: int = 0
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    created_by: str = ""


@dataclass(frozen=True)
class VersionDraft:
    """What a client supplies for a new version (everything but server-set fields)."""

    format: ArtifactFormat
    framework_name: str = ""
    framework_version: str = ""
    signature: Json = field(default_factory=dict)
    output: Json = field(default_factory=dict)
    feature_refs: tuple[str, ...] = ()
    feature_service: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    lineage: Json = field(default_factory=dict)
    baseline_statistics: Json = field(default_factory=dict)
    input_example: tuple[Json, ...] = ()


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    draft: VersionDraft
    sha256: str
    size_bytes: int
    status: VersionStatus = VersionStatus.READY
    status_reason: str = ""
    stage: Stage = Stage.NONE
    aliases: tuple[str, ...] = ()
    attachments: tuple[str, ...] = ()
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    created_by: str = ""

    @property
    def description(self) -> str:
        return self.draft.description

    @property
    def tags(self) -> dict[str, str]:
        return self.draft.tags


@dataclass(frozen=True)
class Alias:
    model: str
    alias: str
    version: int
    previous_version: int = 0
    updated_at: datetime = field(default_factory=now)
    updated_by: str = ""


@dataclass(frozen=True)
class Attachment:
    model: str
    version: int
    name: str
    content_type: str
    sha256: str
    size_bytes: int
    description: str = ""
    created_at: datetime = field(default_factory=now)
    created_by: str = ""


@dataclass(frozen=True)
class AuditInfo:
    """Who asks for a mutation, why, and under which request id."""

    actor: str
    reason: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class AuditEvent:
    revision: int
    time: datetime
    actor: str
    action: Action
    model: str
    resource: str
    before: Json | None
    after: Json | None
    reason: str
    request_id: str


Resource = RegisteredModel | ModelVersion | Alias | Attachment


@dataclass(frozen=True)
class Change:
    """One committed change as Watch reports it: the resource's new state, or None if deleted."""

    revision: int
    time: datetime
    resource: str
    state: Resource | None


@dataclass(frozen=True)
class Snapshot:
    """The registry's state at ``revision``, read in one transaction."""

    revision: int
    models: list[RegisteredModel]
    versions: list[ModelVersion]
    aliases: list[Alias]


# ---- resource names -------------------------------------------------------------------

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
_ATTACHMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
LATEST = "latest"


def model_resource(model: str) -> str:
    return f"models/{model}"


def version_resource(model: str, version: int) -> str:
    return f"models/{model}/versions/{version}"


def alias_resource(model: str, alias: str) -> str:
    return f"models/{model}/aliases/{alias}"


def attachment_resource(model: str, version: int, name: str) -> str:
    return f"models/{model}/versions/{version}/attachments/{name}"


def check_model_id(value: str, field_name: str) -> str:
    if not value:
        raise InvalidInput.field(field_name, "must not be empty")
    if not _MODEL_ID.fullmatch(value):
        raise InvalidInput.field(
            field_name, "must be 1-128 letters, digits, '_', '-' or '.', starting alphanumeric"
        )
    return value


def check_alias(value: str, field_name: str) -> str:
    if not value:
        raise InvalidInput.field(field_name, "must not be empty")
    if value == LATEST or not _ALIAS.fullmatch(value):
        raise InvalidInput.field(
            field_name,
            "must start with a letter, use letters, digits, '_', '-', '.', and not be 'latest'",
        )
    return value


def check_sha256(value: str, field_name: str) -> str:
    if not _SHA256.fullmatch(value):
        raise InvalidInput.field(field_name, "must be 64 lowercase hex digits (sha256)")
    return value


def parse_model_name(name: str, field_name: str = "name") -> str:
    """``models/{model}`` → the model id."""
    prefix, _, model = name.partition("/")
    if not name:
        raise InvalidInput.field(field_name, "must not be empty")
    if prefix != "models" or not model or "/" in model:
        raise InvalidInput.field(field_name, "must be models/{model}")
    return check_model_id(model, field_name)


def _parts(name: str, field_name: str, middle: str, shape: str) -> tuple[str, str]:
    if not name:
        raise InvalidInput.field(field_name, "must not be empty")
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "models" or parts[2] != middle or not parts[3]:
        raise InvalidInput.field(field_name, f"must be {shape}")
    return check_model_id(parts[1], field_name), parts[3]


VersionRef = int | str
"""A version number, an alias name or ``latest``."""


def parse_version_name(
    name: str, field_name: str = "name", *, number_only: bool = False
) -> tuple[str, VersionRef]:
    """``models/{model}/versions/{number|alias|latest}`` → (model, number or alias)."""
    model, ref = _parts(name, field_name, "versions", "models/{model}/versions/{version}")
    if ref.lstrip("-").isdigit():
        number = int(ref)
        if number < 1:
            raise InvalidInput.field(field_name, "version numbers start at 1")
        return model, number
    if number_only:
        raise InvalidInput.field(field_name, "must name a version by its number")
    if ref != LATEST:
        check_alias(ref, field_name)
    return model, ref


def parse_note_resource(name: str, field_name: str = "resource") -> tuple[str, int | None]:
    """``models/{model}`` or ``models/{model}/versions/{number}``."""
    if name.count("/") <= 1:
        return parse_model_name(name, field_name), None
    model, version = parse_version_name(name, field_name, number_only=True)
    assert isinstance(version, int)
    return model, version


def parse_alias_name(name: str, field_name: str = "name") -> tuple[str, str]:
    model, alias = _parts(name, field_name, "aliases", "models/{model}/aliases/{alias}")
    return model, check_alias(alias, field_name)


def parse_attachment_name(name: str, field_name: str = "name") -> tuple[str, int, str]:
    shape = "models/{model}/versions/{version}/attachments/{attachment}"
    parts = name.split("/")
    if len(parts) != 6 or parts[4] != "attachments":
        raise InvalidInput.field(field_name, f"must be {shape}")
    model, version = parse_version_name("/".join(parts[:4]), field_name, number_only=True)
    assert isinstance(version, int)
    return model, version, check_attachment_id(parts[5], field_name)


def check_attachment_id(value: str, field_name: str) -> str:
    if not _ATTACHMENT_ID.fullmatch(value):
        raise InvalidInput.field(
            field_name, "must be 1-128 letters, digits, '_', '-' or '.', starting alphanumeric"
        )
    return value


# ---- field limits ---------------------------------------------------------------------

MAX_DESCRIPTION = 16 * 1024
MAX_TAGS = 64
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 1024
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def tag_violations(tags: dict[str, str], field_name: str) -> list[FieldViolation]:
    problems: list[FieldViolation] = []
    if len(tags) > MAX_TAGS:
        problems.append(FieldViolation(field_name, f"at most {MAX_TAGS} tags"))
    for key, value in tags.items():
        if not key or len(key) > MAX_TAG_KEY:
            problems.append(FieldViolation(f"{field_name}[{key!r}]", "key must be 1-128 chars"))
        if len(value) > MAX_TAG_VALUE:
            problems.append(FieldViolation(f"{field_name}[{key!r}]", "value above 1024 chars"))
    return problems


def description_violations(description: str, field_name: str) -> list[FieldViolation]:
    if len(description) > MAX_DESCRIPTION:
        return [FieldViolation(field_name, f"at most {MAX_DESCRIPTION} characters")]
    return []


def raise_if(problems: list[FieldViolation], what: str) -> None:
    if problems:
        summary = "; ".join(f"{p.field}: {p.description}" for p in problems)
        raise InvalidInput(f"invalid {what}: {summary}", problems)


def page_size(value: int, field_name: str = "page_size") -> int:
    if value < 0:
        raise InvalidInput.field(field_name, "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


# ---- lifecycle rules ------------------------------------------------------------------

TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.NONE: frozenset({Stage.STAGING, Stage.ARCHIVED}),
    Stage.STAGING: frozenset({Stage.NONE, Stage.PRODUCTION, Stage.ARCHIVED}),
    Stage.PRODUCTION: frozenset({Stage.STAGING, Stage.ARCHIVED}),
    Stage.ARCHIVED: frozenset({Stage.STAGING}),
}
"""Allowed stage moves: forward one step, back one step, retire from anywhere; an
archived version comes back only through STAGING (re-evaluation)."""


def check_transition(version: ModelVersion, target: Stage) -> None:
    if target not in TRANSITIONS[version.stage]:
        raise FailedPrecondition(
            f"version {version.version} of {version.model!r} cannot move from "
            f"{version.stage} to {target}"
        )
    if target is Stage.ARCHIVED and version.aliases:
        raise FailedPrecondition(
            f"version {version.version} of {version.model!r} is held by aliases "
            f"{', '.join(version.aliases)}: move them before archiving"
        )


def check_can_take_alias(version: ModelVersion, alias: str) -> None:
    if version.stage is Stage.ARCHIVED:
        raise FailedPrecondition(
            f"version {version.version} of {version.model!r} is archived and cannot take "
            f"alias {alias!r}"
        )
    if version.status is not VersionStatus.READY:
        raise FailedPrecondition(f"version {version.version} of {version.model!r} is not READY")


# ---- JSON form (audit before/after and the persisted change log) ----------------------


def to_json(resource: Resource) -> Json:
    data = asdict(resource)
    for key, value in list(data.items()):
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    if isinstance(resource, ModelVersion):
        data["draft"]["feature_refs"] = list(resource.draft.feature_refs)
        data["draft"]["input_example"] = list(resource.draft.input_example)
        data["aliases"] = list(resource.aliases)
        data["attachments"] = list(resource.attachments)
    return data


def _times(data: Json, *keys: str) -> Json:
    out = dict(data)
    for key in keys:
        out[key] = datetime.fromisoformat(out[key])
    return out


def from_json(kind: ResourceKind, data: Json) -> Resource:
    if kind == "model":
        return RegisteredModel(**_times(data, "created_at", "updated_at"))
    if kind == "alias":
        return Alias(**_times(data, "updated_at"))
    if kind == "attachment":
        return Attachment(**_times(data, "created_at"))
    values = _times(data, "created_at", "updated_at")
    draft = dict(values.pop("draft"))
    draft["format"] = ArtifactFormat(draft["format"])
    draft["feature_refs"] = tuple(draft["feature_refs"])
    draft["input_example"] = tuple(draft["input_example"])
    values["draft"] = VersionDraft(**draft)
    values["status"] = VersionStatus(values["status"])
    values["stage"] = Stage(values["stage"])
    values["aliases"] = tuple(values["aliases"])
    values["attachments"] = tuple(values["attachments"])
    return ModelVersion(**values)


def kind_of(resource: Resource) -> ResourceKind:
    if isinstance(resource, RegisteredModel):
        return "model"
    if isinstance(resource, ModelVersion):
        return "version"
    if isinstance(resource, Alias):
        return "alias"
    return "attachment"


def resource_name(resource: Resource) -> str:
    if isinstance(resource, RegisteredModel):
        return model_resource(resource.name)
    if isinstance(resource, ModelVersion):
        return version_resource(resource.model, resource.version)
    if isinstance(resource, Alias):
        return alias_resource(resource.model, resource.alias)
    return attachment_resource(resource.model, resource.version, resource.name)


WatchKind = Literal["snapshot", "snapshot_complete", "upserted", "deleted", "heartbeat"]


@dataclass(frozen=True)
class WatchEvent:
    kind: WatchKind
    revision: int
    time: datetime
    resource: str = ""
    state: Resource | None = None
