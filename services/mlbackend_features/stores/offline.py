"""The offline store: the full history of every view, and the commit log of writes.

A batch is acknowledged once :meth:`OfflineStore.append` returns: it is durable and has
its sequence number. The online store is derived from this log and can be rebuilt
from it at any time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple

from mlbackend_features.core.model import Commit, CommittedBatch, JoinedRows, Record


class NumericSummary(NamedTuple):
    """Aggregates of one numeric feature over a window, computed inside the store."""

    total: int
    """Rows in the window, nulls included."""
    null_count: int
    nan_count: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    quantiles: list[tuple[float, float]]
    histogram_edges: list[float]
    histogram_counts: list[int]
    distinct_count: int
    top_categories: list[tuple[object, int]]


class OfflineStore(ABC):
    name: str

    @abstractmethod
    async def append(self, batch_id: str, view: str, records: Sequence[Record]) -> Commit:
        """Durably store one batch as the next commit, all or nothing. A ``batch_id``
        seen before returns its original commit with ``duplicate=True``."""

    @abstractmethod
    async def committed_after(self, sequence: int, limit: int) -> list[CommittedBatch]:
        """Up to ``limit`` batches with a higher sequence, in commit order."""

    @abstractmethod
    async def as_of(
        self, view: str, queries: Sequence[tuple[str, int]]
    ) -> list[tuple[int, str] | None]:
        """Per (entity, as-of µs), the latest row at or before it as (event_us, payload):
        ties in event time go to the later commit (see ``core/pit.py``)."""

    async def as_of_lines(self, view: str, queries: Sequence[tuple[str, int]]) -> JoinedRows:
        """:meth:`as_of` for a reader that parses the payloads as JSON lines (Arrow's):
        a store may build the lines in the database."""
        return JoinedRows.of(await self.as_of(view, queries))

    @abstractmethod
    async def latest_in_range(
        self, view: str, start_us: int, end_us: int, after_entity: str, limit: int
    ) -> list[Record]:
        """The newest row per entity with ``start_us <= event_us < end_us``, for entities
        ordered after ``after_entity``, at most ``limit``: what materialization copies."""

    @abstractmethod
    async def count_entities(self, view: str, start_us: int, end_us: int) -> int: ...

    @abstractmethod
    async def feature_summary(
        self,
        view: str,
        feature: str,
        numeric: bool,
        start_us: int,
        end_us: int,
        quantiles: Sequence[float],
        bins: int,
    ) -> NumericSummary:
        """Statistics of one feature over the window, computed by the engine."""

    @abstractmethod
    async def purge_before(self, view: str, cutoff_us: int, limit: int) -> int:
        """Delete up to ``limit`` rows of ``view`` older than ``cutoff_us`` (retention)."""

    @abstractmethod
    async def get_marker(self, name: str) -> int | None:
        """A named position kept with the log (e.g. where materialization ended)."""

    @abstractmethod
    async def set_marker(self, name: str, value: int) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...
