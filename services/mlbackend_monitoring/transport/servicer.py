"""``mlbackend.monitoring.v1.MonitoringService``: convert, await the core, convert back.

The prediction log and feedback are served here (issue #6); metrics, drift, verdicts,
experiment results and rollback policies answer UNIMPLEMENTED until their issue.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from mlbackend.monitoring.v1 import monitoring_pb2 as pb
from mlbackend.monitoring.v1 import monitoring_pb2_grpc
from mlbackend_monitoring.core import model as m
from mlbackend_monitoring.core.predictions import PredictionLogService
from mlbackend_monitoring.transport import convert

Context = Any


def _records(request: pb.IngestPredictionsRequest) -> list[m.PredictionRecord]:
    return [convert.record(r, f"records[{i}]") for i, r in enumerate(request.records)]


class MonitoringServicer(monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(
        self, predictions: PredictionLogService, background: Executor | None = None
    ) -> None:
        self._predictions = predictions
        self._background = background

    async def IngestPredictions(
        self, request: pb.IngestPredictionsRequest, context: Context
    ) -> pb.IngestPredictionsResponse:
        # ~12 µs a record: a batch of 500 is decoded off the loop (on the ingest thread).
        records = await asyncio.get_running_loop().run_in_executor(
            self._background, _records, request
        )
        return convert.ingest_pb(await self._predictions.ingest(records))

    async def ListPredictions(
        self, request: pb.ListPredictionsRequest, context: Context
    ) -> pb.ListPredictionsResponse:
        where = convert.prediction_filter(request.filter)
        page = await self._predictions.page(where, request.page_size, request.page_token)
        return convert.page_pb(page)

    async def CountPredictions(
        self, request: pb.CountPredictionsRequest, context: Context
    ) -> pb.CountPredictionsResponse:
        where = convert.prediction_filter(request.filter)
        return convert.counts_pb(await self._predictions.count(where))

    async def RecordFeedback(
        self, request: pb.RecordFeedbackRequest, context: Context
    ) -> pb.RecordFeedbackResponse:
        feedback = [convert.feedback(f, f"feedback[{i}]") for i, f in enumerate(request.feedback)]
        return convert.feedback_pb(await self._predictions.record_feedback(feedback))
