"""Domain types of the prediction log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

Scalar = int | float | str | bool | datetime | None
"""A feature value, label or class as the log keeps it."""


@dataclass(frozen=True)
class PredictionOutput:
    """What the model answered for one row."""

    label: Scalar = None
    value: float | None = None
    probabilities: tuple[float, ...] = ()
    confidence: float | None = None
    decision_threshold: float | None = None


@dataclass(frozen=True)
class PredictionRecord:
    """One prediction as the gateway (or any caller) logged it."""

    prediction_id: str
    model: str
    version: int
    prediction_time: datetime
    request_id: str = ""
    variant: str = ""
    experiment: str = ""
    shadow: bool = False
    entity_key: dict[str, Scalar] = field(default_factory=dict)
    features: dict[str, Scalar] = field(default_factory=dict)
    output: PredictionOutput = field(default_factory=PredictionOutput)
    latency: timedelta = timedelta(0)
    status_code: int = 0
    error_message: str = ""
    feature_service: str = ""


@dataclass(frozen=True)
class PredictionFilter:
    model: str
    version: int | None = None
    variant: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    include_shadow: bool = False


@dataclass(frozen=True)
class PredictionCount:
    model: str
    version: int
    variant: str
    count: int
    error_count: int
    labeled_count: int


@dataclass(frozen=True)
class Feedback:
    """An observed outcome for a prediction; the last one recorded wins."""

    prediction_id: str
    label: Scalar
    feedback_time: datetime
    reward: float | None = None
    source: str = ""


@dataclass(frozen=True)
class Cursor:
    """Where a newest-first page ended: the last record's time and id."""

    prediction_time: datetime
    prediction_id: str


@dataclass(frozen=True)
class Page:
    records: list[PredictionRecord]
    next_cursor: Cursor | None


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class FeedbackResult:
    matched: int
    unmatched: int
