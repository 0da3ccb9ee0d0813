"""Messages of ``mlbackend.monitoring.v1`` to and from monitoring's domain types."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.monitoring.v1 import monitoring_pb2 as pb
from mlbackend_clients.values import to_scalar, to_value
from mlbackend_monitoring.core import model as m
from mlbackend_monitoring.core.predictions import encode_page_token
from mlbackend_runtime.errors import FieldViolation, InvalidInput
from mlbackend_runtime.received import scalar_at, time_at


def _time(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _optional_time(message: object, field: str, path: str) -> datetime | None:
    """The timestamp ``field`` of ``message`` if set; ``path`` names it in errors."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    return time_at(getattr(message, field), path)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def _scalars(values: Mapping[str, common_pb2.Value]) -> dict[str, m.Scalar]:
    # Keys then lookups: cheaper than the map's items() (upb builds a tuple per entry);
    # a double, the usual feature, without to_scalar's general path.
    out: dict[str, m.Scalar] = {}
    for name in values:
        value = values[name]
        out[name] = (
            value.double_value if value.WhichOneof("kind") == "double_value" else to_scalar(value)
        )
    return out


def _output(p: common_pb2.Prediction) -> m.PredictionOutput:
    return m.PredictionOutput(
        label=to_scalar(p.label),
        value=p.value if p.HasField("value") else None,
        probabilities=tuple(p.probabilities),
        confidence=p.confidence if p.HasField("confidence") else None,
        decision_threshold=p.decision_threshold if p.HasField("decision_threshold") else None,
    )


def _output_pb(o: m.PredictionOutput) -> common_pb2.Prediction:
    return common_pb2.Prediction(
        label=to_value(o.label),
        value=o.value,
        probabilities=o.probabilities,
        confidence=o.confidence,
        decision_threshold=o.decision_threshold,
    )


def record(r: pb.PredictionRecord, path: str = "record") -> m.PredictionRecord:
    """The record of ``r`` (``path`` names it in errors: ``records[3]``)."""
    try:
        return _record(r)
    except (ValueError, OverflowError):
        # A timestamp, duration or value out of what its type may hold: name each.
        raise _unconvertible(r, path) from None


def _unconvertible(r: pb.PredictionRecord, path: str) -> InvalidInput:
    timestamp, duration = "not a valid timestamp", "not a valid duration"
    checks: list[tuple[str, str, Callable[[], object]]] = [
        (f"{path}.prediction_time", timestamp, functools.partial(_time, r.prediction_time)),
        (f"{path}.latency", duration, r.latency.ToTimedelta),
        (f"{path}.output.label", timestamp, functools.partial(to_scalar, r.output.label)),
    ]
    for where, values in (("entity_key.join_keys", r.entity_key.join_keys),
                          ("features", r.features)):  # fmt: skip
        for name in values:
            checks.append(
                (f"{path}.{where}.{name}", timestamp, functools.partial(to_scalar, values[name]))
            )
    violations = []
    for field, description, convert in checks:
        try:
            convert()
        except (ValueError, OverflowError):
            violations.append(FieldViolation(field, description))
    if not violations:
        return InvalidInput.field(path, "a value out of its type's range")
    return InvalidInput(f"{violations[0].field}: {violations[0].description}", violations)


def _record(r: pb.PredictionRecord) -> m.PredictionRecord:
    return m.PredictionRecord(
        prediction_id=r.prediction_id,
        model=r.model,
        version=r.version,
        # Unset stays at the epoch, which the core refuses with the field named.
        prediction_time=_time(r.prediction_time),
        request_id=r.request_id,
        variant=r.variant,
        experiment=r.experiment,
        shadow=r.shadow,
        entity_key=_scalars(r.entity_key.join_keys),
        features=_scalars(r.features),
        output=_output(r.output),
        latency=r.latency.ToTimedelta(),
        status_code=r.status_code,
        error_message=r.error_message,
        feature_service=r.feature_service,
    )


def record_pb(r: m.PredictionRecord) -> pb.PredictionRecord:
    latency = duration_pb2.Duration()
    latency.FromTimedelta(r.latency)
    return pb.PredictionRecord(
        prediction_id=r.prediction_id,
        request_id=r.request_id,
        prediction_time=_timestamp(r.prediction_time),
        model=r.model,
        version=r.version,
        variant=r.variant,
        experiment=r.experiment,
        shadow=r.shadow,
        entity_key=common_pb2.EntityKey(
            join_keys={k: to_value(v) for k, v in r.entity_key.items()}
        ),
        features={k: to_value(v) for k, v in r.features.items()},
        output=_output_pb(r.output),
        latency=latency,
        status_code=r.status_code,
        error_message=r.error_message,
        feature_service=r.feature_service,
    )


def prediction_filter(f: pb.PredictionFilter) -> m.PredictionFilter:
    return m.PredictionFilter(
        model=f.model,
        version=f.version if f.HasField("version") else None,
        variant=f.variant,
        start_time=_optional_time(f, "start_time", "filter.start_time"),
        end_time=_optional_time(f, "end_time", "filter.end_time"),
        include_shadow=f.include_shadow,
    )


def ingest_pb(result: m.IngestResult) -> pb.IngestPredictionsResponse:
    return pb.IngestPredictionsResponse(
        accepted_count=result.accepted, duplicate_count=result.duplicates
    )


def page_pb(page: m.Page) -> pb.ListPredictionsResponse:
    return pb.ListPredictionsResponse(
        records=[record_pb(r) for r in page.records],
        next_page_token=encode_page_token(page.next_cursor),
    )


def counts_pb(counts: list[m.PredictionCount]) -> pb.CountPredictionsResponse:
    return pb.CountPredictionsResponse(
        total_count=sum(c.count for c in counts),
        counts=[
            pb.PredictionCount(
                model=c.model,
                version=c.version,
                variant=c.variant,
                count=c.count,
                error_count=c.error_count,
                labeled_count=c.labeled_count,
            )
            for c in counts
        ],
    )


def feedback(f: pb.Feedback, path: str = "feedback") -> m.Feedback:
    """The feedback of ``f`` (``path`` names it in errors: ``feedback[3]``)."""
    return m.Feedback(
        prediction_id=f.prediction_id,
        label=scalar_at(f.label, f"{path}.label"),
        reward=f.reward if f.HasField("reward") else None,
        feedback_time=_optional_time(f, "feedback_time", f"{path}.feedback_time")
        or datetime.now(UTC),
        source=f.source,
    )


def feedback_pb(result: m.FeedbackResult) -> pb.RecordFeedbackResponse:
    return pb.RecordFeedbackResponse(matched_count=result.matched, unmatched_count=result.unmatched)
