"""What the pipeline needs from the other services; adapters in ``upstream/`` provide it.

Each adapter turns a dependency that does not answer into
``DependencyUnavailable(<name>)`` so the core never sees a transport error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from mlbackend_gateway.core.model import (
    FeatureTable,
    FieldPath,
    ModelVersionInfo,
    PredictionInput,
    PredictionRecord,
    RegisteredModelInfo,
    Scalar,
    Scored,
)
from mlbackend_runtime.errors import FailedPrecondition


class ModelCatalog(Protocol):
    """The registry as the gateway sees it."""

    async def get_model(self, model: str) -> RegisteredModelInfo: ...

    async def get_version(self, model: str, version: int) -> ModelVersionInfo: ...

    async def list_models(self, page_size: int, page_token: str) -> tuple[list[str], str]: ...


class FeatureReader(Protocol):
    async def read(
        self, version: ModelVersionInfo, inputs: Sequence[PredictionInput], path: FieldPath
    ) -> FeatureTable:
        """One read of the version's feature service (or refs) for every input; the
        store's field errors name input ``i`` as ``path(i)``."""
        ...


class Scorer(Protocol):
    async def score(self, model: str, version: int, vectors: Sequence[Sequence[Scalar]]) -> Scored:
        """Raises :class:`ScoringRefused` when serving refuses values of the vectors."""
        ...


@dataclass(frozen=True)
class RefusedValue:
    row: int
    """The vector's position in the call."""
    feature: str
    description: str


class ScoringRefused(FailedPrecondition):
    """Serving refused some vectors' values (a NaN where the signature does not allow
    one, an infinity). A deployment mismatch unless the caller sent those values: the
    pipeline decides which, from where each value came."""

    def __init__(self, message: str, refused: Sequence[RefusedValue]) -> None:
        super().__init__(message)
        self.refused = tuple(refused)


class RecordSink(Protocol):
    async def send(self, records: Sequence[PredictionRecord]) -> None: ...
