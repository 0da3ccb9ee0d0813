"""Monitoring as the record sink: one IngestPredictions per batch."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.monitoring.v1 import monitoring_pb2
from mlbackend_clients.monitoring import MonitoringClient
from mlbackend_gateway.core.model import ModelOutput, PredictionRecord
from mlbackend_gateway.upstream.failures import transport_failure
from mlbackend_gateway.upstream.values import to_key, to_value
from mlbackend_runtime.errors import DomainError
from mlbackend_runtime.status import code_for


def prediction_message(output: ModelOutput) -> common_pb2.Prediction:
    message = common_pb2.Prediction(probabilities=output.probabilities)
    if output.label is not None:
        message.label.CopyFrom(to_value(output.label))
    if output.value is not None:
        message.value = output.value
    if output.confidence is not None:
        message.confidence = output.confidence
    if output.decision_threshold is not None:
        message.decision_threshold = output.decision_threshold
    return message


def record_message(record: PredictionRecord) -> monitoring_pb2.PredictionRecord:
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(record.time)
    latency = duration_pb2.Duration()
    latency.FromNanoseconds(int(record.latency_seconds * 1e9))
    message = monitoring_pb2.PredictionRecord(
        prediction_id=record.prediction_id,
        request_id=record.request_id,
        prediction_time=when,
        model=record.model,
        version=record.version,
        variant=record.variant,
        experiment=record.experiment,
        shadow=record.shadow,
        entity_key=to_key(record.entity_key),
        features={k: to_value(v) for k, v in record.features.items()},
        latency=latency,
        status_code=_status_code(record.error),
        error_message=_error_message(record.error),
        feature_service=record.feature_service,
    )
    if record.output is not None:
        message.output.CopyFrom(prediction_message(record.output))
    return message


def _status_code(error: Exception | None) -> int:
    if error is None:
        return grpc.StatusCode.OK.value[0]
    if isinstance(error, DomainError):
        return code_for(error).value[0]
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().value[0]
    return grpc.StatusCode.INTERNAL.value[0]


def _error_message(error: Exception | None) -> str:
    if error is None:
        return ""
    if isinstance(error, DomainError):
        return error.message
    if isinstance(error, grpc.aio.AioRpcError):
        return error.details() or ""
    return type(error).__name__


class MonitoringSink:
    def __init__(self, client: MonitoringClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def send(self, records: Sequence[PredictionRecord]) -> None:
        request = monitoring_pb2.IngestPredictionsRequest(
            records=[record_message(r) for r in records]
        )
        try:
            await self._client.stub.IngestPredictions(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise transport_failure("monitoring", exc) or exc from None
