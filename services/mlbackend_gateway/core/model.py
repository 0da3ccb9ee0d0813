"""Domain types of the online inference pipeline."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from mlbackend_runtime.errors import DomainError

Scalar = int | float | str | bool | datetime | None
"""One typed value; ``None`` is null."""

EntityKey = Mapping[str, Scalar]

FieldPath = Callable[[int], str]
"""The request path of input ``i`` (``input`` for Predict, ``inputs[i]`` for a batch)."""


class DType(enum.Enum):
    INT64 = "int64"
    DOUBLE = "double"
    STRING = "string"
    BOOL = "bool"
    TIMESTAMP = "timestamp"


class FeatureStatus(enum.Enum):
    """Why a model input has the value it has (the feature store's vocabulary)."""

    PRESENT = "present"
    NOT_FOUND = "not_found"
    EXPIRED = "expired"
    DEFAULTED = "defaulted"
    NULL_VALUE = "null_value"
    REQUEST_INPUT = "request_input"
    COMPUTED = "computed"

    @property
    def missing(self) -> bool:
        return self in (FeatureStatus.NOT_FOUND, FeatureStatus.EXPIRED, FeatureStatus.NULL_VALUE)


class FeatureAction(enum.Enum):
    """What the gateway did about an input."""

    NONE = "none"
    DEFAULT_FILLED = "default_filled"
    NULL_PASSED = "null_passed"


class OutputKind(enum.Enum):
    CLASSIFIER = "classifier"
    REGRESSOR = "regressor"
    RANKER = "ranker"
    UNSPECIFIED = "unspecified"


@dataclass(frozen=True)
class InputFeature:
    """One model input of a version's signature."""

    name: str
    dtype: DType
    nullable: bool = False


@dataclass(frozen=True)
class OutputInfo:
    kind: OutputKind
    classes: tuple[Scalar, ...] = ()
    decision_threshold: float | None = None
    top_k: int = 0


@dataclass(frozen=True)
class ModelVersionInfo:
    """What the gateway needs to know about one registered version.

    ``defaults`` is the missing-feature policy: an input absent from the feature store
    gets its declared default; without one, a nullable input is passed as null and any
    other makes the prediction fail with FAILED_PRECONDITION naming the input.
    """

    model: str
    version: int
    signature: tuple[InputFeature, ...]
    output: OutputInfo
    feature_service: str = ""
    feature_refs: tuple[str, ...] = ()
    defaults: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredModelInfo:
    name: str
    aliases: Mapping[str, int]
    latest_version: int


@dataclass(frozen=True)
class VersionSelector:
    """Exactly one of ``version``/``alias``, or neither (the caller's default)."""

    version: int | None = None
    alias: str | None = None

    @property
    def is_default(self) -> bool:
        return self.version is None and self.alias is None

    def describe(self) -> str:
        if self.version is not None:
            return f"version {self.version}"
        return f"alias {self.alias!r}" if self.alias else "default version"


DEFAULT_ALIAS = "production"


@dataclass(frozen=True)
class PredictionInput:
    entity_key: EntityKey
    request_features: Mapping[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredValue:
    """One cell of a feature read."""

    value: Scalar
    status: FeatureStatus


@dataclass(frozen=True)
class FeatureTable:
    """A feature read: column names, one row of cells per entity (request order)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[StoredValue, ...], ...]
    feature_service: str = ""


@dataclass(frozen=True)
class FeatureOutcome:
    name: str
    status: FeatureStatus
    action: FeatureAction
    value: Scalar


@dataclass(frozen=True)
class ModelOutput:
    """One row of serving's answer."""

    label: Scalar = None
    value: float | None = None
    probabilities: tuple[float, ...] = ()
    confidence: float | None = None
    decision_threshold: float | None = None


@dataclass(frozen=True)
class Scored:
    version: int
    output: OutputInfo
    rows: tuple[ModelOutput, ...]


@dataclass(frozen=True)
class PredictionResult:
    prediction_id: str
    model: str
    version: int
    variant: str
    experiment: str
    prediction: ModelOutput
    output: OutputInfo
    features: tuple[FeatureOutcome, ...]
    feature_service: str


@dataclass(frozen=True)
class FailedInput:
    """An input of a batch with partial results that got no prediction: the error it
    alone would have failed the call with, naming it by its position."""

    model: str
    variant: str
    experiment: str
    error: DomainError


@dataclass(frozen=True)
class PredictionRecord:
    """What monitoring keeps of one prediction (or one failed attempt)."""

    prediction_id: str
    request_id: str
    time: datetime
    model: str
    version: int
    variant: str
    experiment: str
    shadow: bool
    entity_key: EntityKey
    features: Mapping[str, Scalar]
    output: ModelOutput | None
    latency_seconds: float
    feature_service: str
    error: Exception | None = None
    """Why the attempt failed (``output`` is then None); None for a prediction."""
