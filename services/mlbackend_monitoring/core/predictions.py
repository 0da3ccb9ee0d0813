"""The prediction log's rules: what a valid record is, paging, counting, feedback."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from mlbackend_monitoring.core.model import (
    Cursor,
    Feedback,
    FeedbackResult,
    IngestResult,
    Page,
    PredictionCount,
    PredictionFilter,
    PredictionRecord,
)
from mlbackend_monitoring.stores.base import PredictionLog
from mlbackend_runtime.errors import FieldViolation, InvalidInput

MAX_BATCH = 10_000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
MAX_ID_LENGTH = 256
MAX_LATENCY = timedelta(days=1)
"""A record's latency beyond this is a caller's mistake (and past it, its microseconds
need not fit the log's 64-bit integers)."""


def _check_id(field: str, value: str, violations: list[FieldViolation]) -> None:
    if not value:
        violations.append(FieldViolation(field, "must not be empty"))
    elif len(value) > MAX_ID_LENGTH:
        violations.append(FieldViolation(field, f"longer than {MAX_ID_LENGTH} characters"))


def _raise_if(violations: list[FieldViolation], what: str) -> None:
    if violations:
        raise InvalidInput(f"{len(violations)} invalid field(s) in {what}", violations)


def _check_batch(field: str, size: int) -> None:
    if size > MAX_BATCH:
        raise InvalidInput.field(field, f"at most {MAX_BATCH} per call, got {size}")


def encode_page_token(cursor: Cursor | None) -> str:
    if cursor is None:
        return ""
    raw = json.dumps([cursor.prediction_time.isoformat(), cursor.prediction_id])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_page_token(token: str) -> Cursor | None:
    if not token:
        return None
    try:
        moment, prediction_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return Cursor(datetime.fromisoformat(moment), str(prediction_id))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidInput.field("page_token", "not a token this service issued") from None


class PredictionLogService:
    """Ingest, page through and count prediction records; attach feedback."""

    def __init__(self, log: PredictionLog) -> None:
        self._log = log

    async def ingest(self, records: Sequence[PredictionRecord]) -> IngestResult:
        _check_batch("records", len(records))
        violations: list[FieldViolation] = []
        for i, record in enumerate(records):
            _check_id(f"records[{i}].prediction_id", record.prediction_id, violations)
            _check_id(f"records[{i}].model", record.model, violations)
            if record.version < 1:
                violations.append(FieldViolation(f"records[{i}].version", "must be >= 1"))
            if not 2000 <= record.prediction_time.year < 2200:
                # Before: unset. After: past the log's nanoseconds in 64 bits (2262).
                violations.append(
                    FieldViolation(
                        f"records[{i}].prediction_time", "must be set, between 2000 and 2200"
                    )
                )
            if not timedelta(0) <= record.latency <= MAX_LATENCY:
                violations.append(
                    FieldViolation(f"records[{i}].latency", "must be between 0 and 1 day")
                )
        _raise_if(violations, "records")
        return await self._log.ingest(records)

    async def page(self, where: PredictionFilter, page_size: int, page_token: str) -> Page:
        self._check_filter(where)
        if page_size < 0:
            raise InvalidInput.field("page_size", "must not be negative")
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        return await self._log.page(where, limit, decode_page_token(page_token))

    async def count(self, where: PredictionFilter) -> list[PredictionCount]:
        self._check_filter(where)
        return await self._log.count(where)

    async def record_feedback(self, feedback: Sequence[Feedback]) -> FeedbackResult:
        _check_batch("feedback", len(feedback))
        violations: list[FieldViolation] = []
        for i, item in enumerate(feedback):
            _check_id(f"feedback[{i}].prediction_id", item.prediction_id, violations)
            if item.label is None and item.reward is None:
                violations.append(FieldViolation(f"feedback[{i}].label", "label or reward needed"))
        _raise_if(violations, "feedback")
        return await self._log.record_feedback(feedback)

    @staticmethod
    def _check_filter(where: PredictionFilter) -> None:
        violations: list[FieldViolation] = []
        _check_id("filter.model", where.model, violations)
        if where.start_time and where.end_time and where.start_time >= where.end_time:
            violations.append(FieldViolation("filter.end_time", "must be after start_time"))
        _raise_if(violations, "filter")
