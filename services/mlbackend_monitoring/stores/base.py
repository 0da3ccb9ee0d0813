"""The prediction log's storage interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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


class PredictionLog(Protocol):
    async def ingest(self, records: Sequence[PredictionRecord]) -> IngestResult:
        """Store every record whose id is new, all in one transaction."""
        ...

    async def page(self, where: PredictionFilter, limit: int, after: Cursor | None) -> Page:
        """Records matching ``where``, newest first, starting after ``after``."""
        ...

    async def count(self, where: PredictionFilter) -> list[PredictionCount]:
        """Counts per version and variant."""
        ...

    async def record_feedback(self, feedback: Sequence[Feedback]) -> FeedbackResult:
        """Keep the outcomes (last one per prediction wins) and say how many matched."""
        ...

    async def close(self) -> None: ...
