"""Monitoring as the record sink: one IngestPredictions per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from mlbackend.common.v1 import common_pb2
from mlbackend.monitoring.v1 import monitoring_pb2
from mlbackend_clients.monitoring import MonitoringClient
from mlbackend_gateway.core.model import ModelOutput, PredictionRecord
from mlbackend_gateway.upstream.failures import transport_failure
from mlbackend_gateway.upstream.values import set_key, set_value
from mlbackend_runtime.errors import DomainError
from mlbackend_runtime.status import code_for


def set_prediction(target: common_pb2.Prediction, output: ModelOutput) -> None:
    """Write ``output`` into ``target`` in place (marked present even when empty)."""
    target.SetInParent()
    target.probabilities.extend(output.probabilities)
    if output.label is not None:
        set_value(target.label, output.label)
    if output.value is not None:
        target.value = output.value
    if output.confidence is not None:
        target.confidence = output.confidence
    if output.decision_threshold is not None:
        target.decision_threshold = output.decision_threshold


def set_record(target: monitoring_pb2.PredictionRecord, record: PredictionRecord) -> None:
    """Write ``record`` into ``target`` in place (``request.records.add()``: no copies)."""
    target.prediction_id = record.prediction_id
    target.request_id = record.request_id
    target.prediction_time.FromDatetime(record.time)
    target.model = record.model
    target.version = record.version
    target.variant = record.variant
    target.experiment = record.experiment
    target.shadow = record.shadow
    target.entity_key.SetInParent()
    set_key(target.entity_key, record.entity_key)
    features = target.features
    for name, value in record.features.items():
        set_value(features[name], value)
    target.latency.FromNanoseconds(int(record.latency_seconds * 1e9))
    target.status_code = _status_code(record.error)
    target.error_message = _error_message(record.error)
    target.feature_service = record.feature_service
    if record.output is not None:
        set_prediction(target.output, record.output)


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


_SLICE = 32


class MonitoringSink:
    def __init__(self, client: MonitoringClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def send(self, records: Sequence[PredictionRecord]) -> None:
        request = monitoring_pb2.IngestPredictionsRequest()
        for i, record in enumerate(records, 1):
            set_record(request.records.add(), record)
            if i % _SLICE == 0:
                # ~10 µs a record: a batch of 500 written in one go would hold the event
                # loop, and every prediction waiting on it, for ~5 ms.
                await asyncio.sleep(0)
        try:
            await self._client.stub.IngestPredictions(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise transport_failure("monitoring", exc) or exc from None
