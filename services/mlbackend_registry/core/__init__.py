"""The registry's domain: types, rules and the service that applies them.

Nothing here imports grpc or generated ``*_pb2`` modules; ``transport/`` converts.
"""

from mlbackend_registry.core.domain import (
    Alias,
    AuditEvent,
    AuditInfo,
    Change,
    ModelVersion,
    RegisteredModel,
    Snapshot,
    Stage,
    VersionDraft,
    VersionStatus,
)
from mlbackend_registry.core.service import RegistryCore, UploadSpec

__all__ = [
    "Alias",
    "AuditEvent",
    "AuditInfo",
    "Change",
    "ModelVersion",
    "RegisteredModel",
    "RegistryCore",
    "Snapshot",
    "Stage",
    "UploadSpec",
    "VersionDraft",
    "VersionStatus",
]
