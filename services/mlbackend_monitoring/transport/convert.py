"""Messages of ``mlbackend.monitoring.v1`` to and from monitoring's domain types."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.monitoring.v1 import monitoring_pb2 as pb
from mlbackend_clients.values import to_scalar, to_value
from mlbackend_monitoring.core import model as m
from mlbackend_monitoring.core.predictions import encode_page_token


def _time(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _optional_time(message: object, field: str) -> datetime | None:
    return _time(getattr(message, field)) if message.HasField(field) else None  # type: ignore[attr-defined]


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


def record(r: pb.PredictionRecord) -> m.PredictionRecord:
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
        start_time=_optional_time(f, "start_time"),
        end_time=_optional_time(f, "end_time"),
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


def feedback(f: pb.Feedback) -> m.Feedback:
    return m.Feedback(
        prediction_id=f.prediction_id,
        label=to_scalar(f.label),
        reward=f.reward if f.HasField("reward") else None,
        feedback_time=_optional_time(f, "feedback_time") or datetime.now(UTC),
        source=f.source,
    )


def feedback_pb(result: m.FeedbackResult) -> pb.RecordFeedbackResponse:
    return pb.RecordFeedbackResponse(matched_count=result.matched, unmatched_count=result.unmatched)
