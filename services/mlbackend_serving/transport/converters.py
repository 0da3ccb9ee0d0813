"""Messages of ``mlbackend.serving.v1`` / ``mlbackend.common.v1`` ↔ serving domain types."""

from __future__ import annotations

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2
from mlbackend.serving.v1 import serving_pb2
from mlbackend_runtime.errors import InvalidInput
from mlbackend_serving.core.health import HealthReport, LatencySummary, Verdict
from mlbackend_serving.core.inputs import Maps, RowsInput, Vectors
from mlbackend_serving.core.model import DType, OutputKind, OutputSpec, Scalar
from mlbackend_serving.core.service import ModelState, PredictionResult, Selector, ServedVersion

_STATES = {
    ModelState.LOADING: serving_pb2.MODEL_STATE_LOADING,
    ModelState.WARMING: serving_pb2.MODEL_STATE_WARMING,
    ModelState.READY: serving_pb2.MODEL_STATE_READY,
    ModelState.UNLOADING: serving_pb2.MODEL_STATE_UNLOADING,
    ModelState.FAILED: serving_pb2.MODEL_STATE_FAILED,
}
_VERDICTS = {
    Verdict.HEALTHY: common_pb2.HEALTH_VERDICT_HEALTHY,
    Verdict.UNHEALTHY: common_pb2.HEALTH_VERDICT_UNHEALTHY,
    Verdict.STALE: common_pb2.HEALTH_VERDICT_STALE,
}
_DTYPES = {
    DType.DOUBLE: common_pb2.DATA_TYPE_DOUBLE,
    DType.INT64: common_pb2.DATA_TYPE_INT64,
    DType.BOOL: common_pb2.DATA_TYPE_BOOL,
}
_KINDS = {
    OutputKind.CLASSIFIER: common_pb2.OUTPUT_KIND_CLASSIFIER,
    OutputKind.REGRESSOR: common_pb2.OUTPUT_KIND_REGRESSOR,
}


def selector(message: common_pb2.VersionSelector, field: str = "version") -> Selector:
    which = message.WhichOneof("selector")
    if which == "version":
        if message.version < 1:
            raise InvalidInput.field(f"{field}.version", "must be >= 1")
        return int(message.version)
    if which == "alias":
        return message.alias or None
    return None


def scalar(value: common_pb2.Value) -> object:
    """A wire value as Python; a timestamp stays a message so it fails the type check."""
    which = value.WhichOneof("kind")
    if which is None or which == "null_value":
        return None
    return getattr(value, which)


def predict_call(request: serving_pb2.PredictRequest) -> tuple[str, Selector, RowsInput]:
    """The core's ``predict`` arguments for a Predict request."""
    return request.model, selector(request.version), rows_input(request)


def rows_input(request: serving_pb2.PredictRequest) -> RowsInput:
    if request.vectors and request.rows:
        raise InvalidInput.field("rows", "set either vectors or rows, not both")
    if not request.vectors and not request.rows:
        raise InvalidInput.field("vectors", "no rows to predict")
    if request.vectors:
        return Vectors([[scalar(v) for v in vector.values] for vector in request.vectors])
    return Maps([{k: scalar(v) for k, v in row.values.items()} for row in request.rows])


def value(item: Scalar) -> common_pb2.Value:
    if item is None:
        return common_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(item, bool):
        return common_pb2.Value(bool_value=item)
    if isinstance(item, int):
        return common_pb2.Value(int64_value=item)
    if isinstance(item, float):
        return common_pb2.Value(double_value=item)
    return common_pb2.Value(string_value=str(item))


def output_spec(output: OutputSpec) -> common_pb2.OutputSpec:
    spec = common_pb2.OutputSpec(
        kind=_KINDS[output.kind], classes=[value(c) for c in output.classes]
    )
    if output.decision_threshold is not None:
        spec.decision_threshold = output.decision_threshold
    return spec


def predict_response(result: PredictionResult) -> serving_pb2.PredictResponse:
    p = result.predictions
    threshold = result.output.decision_threshold
    predictions = []
    if p.values is not None:
        predictions = [common_pb2.Prediction(value=v) for v in p.values.tolist()]
    elif p.labels is not None and p.probabilities is not None and p.confidence is not None:
        for label, proba, confidence in zip(
            p.labels.tolist(), p.probabilities.tolist(), p.confidence.tolist(), strict=True
        ):
            prediction = common_pb2.Prediction(
                label=value(label), probabilities=proba, confidence=confidence
            )
            if threshold is not None:
                prediction.decision_threshold = threshold
            predictions.append(prediction)
    return serving_pb2.PredictResponse(
        model=result.key.name,
        version=result.key.version,
        output=output_spec(result.output),
        predictions=predictions,
    )


def served_model(served: ServedVersion) -> serving_pb2.ServedModel:
    message = serving_pb2.ServedModel(
        model=served.key.name,
        version=served.key.version,
        aliases=served.aliases,
        state=_STATES[served.state],
        reason=served.reason,
        format=common_pb2.ARTIFACT_FORMAT_SKOPS,
        artifact_sha256=served.model.sha256 if served.model else "",
        max_batch_size=served.policy.max_batch_size,
        max_batch_wait=_duration(served.policy.max_wait),
    )
    if served.ready_time is not None:
        message.ready_time.CopyFrom(_timestamp(served.ready_time))
    return message


def model_version(served: ServedVersion) -> registry_pb2.ModelVersion:
    """What serving knows of the version's metadata (simple mode: its model.json)."""
    message = registry_pb2.ModelVersion(
        name=f"models/{served.key.name}/versions/{served.key.version}",
        version=served.key.version,
        aliases=served.aliases,
    )
    model = served.model
    if model is not None:
        message.signature.features.extend(
            common_pb2.FeatureSpec(name=f.name, dtype=_DTYPES[f.dtype], nullable=f.nullable)
            for f in model.signature.features
        )
        message.output.CopyFrom(output_spec(model.output))
        message.description = str(model.metadata.get("description", ""))
    return message


def model_health(served: ServedVersion, report: HealthReport) -> serving_pb2.ModelHealth:
    message = serving_pb2.ModelHealth(
        model=served.key.name,
        version=served.key.version,
        request_count=report.request_count,
        error_count=report.error_count,
        error_rate=report.error_rate,
        verdict=_VERDICTS[report.verdict],
        reasons=report.reasons,
    )
    if report.latency is not None:
        message.latency.CopyFrom(_latency(report.latency))
    if report.last_request_time is not None:
        message.last_request_time.CopyFrom(_timestamp(report.last_request_time))
    return message


def window(request: serving_pb2.GetModelHealthRequest) -> float | None:
    if not request.HasField("window"):
        return None
    try:
        seconds = request.window.ToTimedelta().total_seconds()
    except (ValueError, OverflowError) as exc:  # past what a duration may hold
        raise InvalidInput.field("window", f"not a valid duration: {exc}") from None
    if seconds <= 0:
        raise InvalidInput.field("window", "must be positive")
    return seconds


def page(token: str, size: int, total: int) -> tuple[int, int, str]:
    """(start, stop, next token) of a page; the token is the opaque offset."""
    if size < 0:
        raise InvalidInput.field("page_size", "must not be negative")
    try:
        start = int(token) if token else 0
    except ValueError:
        raise InvalidInput.field("page_token", "not a token this server issued") from None
    if start < 0 or start > total:
        raise InvalidInput.field("page_token", "not a token this server issued")
    stop = min(total, start + (size or 100))
    return start, stop, str(stop) if stop < total else ""


def _latency(summary: LatencySummary) -> common_pb2.LatencySummary:
    return common_pb2.LatencySummary(
        mean=_duration(summary.mean),
        p50=_duration(summary.p50),
        p90=_duration(summary.p90),
        p95=_duration(summary.p95),
        p99=_duration(summary.p99),
        max=_duration(summary.max),
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(round(seconds * 1e9))
    return t
