"""Prediction records to monitoring, off the request path.

``offer`` never waits: a record goes into a bounded in-memory queue, or is dropped and
counted when the queue is full or no monitoring is configured. One background task
drains the queue in batches (up to ``batch_size`` records, or whatever arrived within
``flush_seconds``); a batch the sink cannot take is dropped and counted, never retried
into a growing backlog. ``close`` drains what is left within a time bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mlbackend_gateway.core.model import PredictionRecord
from mlbackend_gateway.core.ports import RecordSink

logger = logging.getLogger("mlbackend.gateway.records")

DropCounter = Callable[[str, int], None]
"""Called with a reason (``queue_full``, ``not_configured``, ``unavailable``,
``shutdown``) and how many records were dropped for it."""

SentCounter = Callable[[int], None]


@dataclass(frozen=True)
class QueueLimits:
    """Batches leave at ``batch_size`` records or ``flush_seconds`` after their first.

    Small and frequent on purpose: monitoring spends ~30 µs of CPU a record, and a batch
    of 500 (~15 ms in one go) measurably raised the gateway's p99 on a shared host, where
    batches of 100 every 50 ms did not (``bench/gateway/README.md``). The price is ~0.5
    ms of monitoring CPU per batch.
    """

    max_records: int = 10_000
    batch_size: int = 100
    flush_seconds: float = 0.05
    close_seconds: float = 5.0


class RecordQueue:
    def __init__(
        self,
        sink: RecordSink | None,
        limits: QueueLimits,
        dropped: DropCounter,
        sent: SentCounter,
    ) -> None:
        self._sink = sink
        self._limits = limits
        self._dropped = dropped
        self._sent = sent
        self._pending: deque[PredictionRecord] = deque()
        # The drain task sleeps on these instead of waking for every record: ``_arrived``
        # is set by the first record offered to an empty queue, ``_full`` by the one that
        # completes a batch (or by the flush timer).
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._sink is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="records")

    def offer(self, record: PredictionRecord) -> None:
        if self._sink is None:
            self._dropped("not_configured", 1)
            return
        pending = self._pending
        if 0 < self._limits.max_records <= len(pending):
            self._dropped("queue_full", 1)
            return
        pending.append(record)
        if len(pending) == 1:
            self._arrived.set()
        if len(pending) >= self._limits.batch_size:
            self._full.set()

    async def _next_batch(self) -> list[PredictionRecord]:
        """Up to ``batch_size`` records: as soon as that many are queued, else whatever
        arrived within ``flush_seconds`` of the first one."""
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        size = max(1, self._limits.batch_size)
        if len(self._pending) < size:
            self._full.clear()
            timer = asyncio.get_running_loop().call_later(
                self._limits.flush_seconds, self._full.set
            )
            try:
                await self._full.wait()
            finally:
                timer.cancel()
        pending = self._pending
        return [pending.popleft() for _ in range(min(size, len(pending)))]

    async def _send(self, batch: list[PredictionRecord]) -> None:
        assert self._sink is not None
        try:
            await self._sink.send(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Monitoring down or slow: the records are lost, the loss is counted.
            logger.warning("dropped %d prediction record(s): %s", len(batch), exc)
            self._dropped("unavailable", len(batch))
        else:
            self._sent(len(batch))

    async def _drain(self) -> None:
        while True:
            await self._send(await self._next_batch())

    def _take_all(self) -> list[PredictionRecord]:
        out = list(self._pending)
        self._pending.clear()
        return out

    async def close(self) -> None:
        """Stop the drain task, then send what is queued within ``close_seconds``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = self._take_all()
        if not left or self._sink is None:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + self._limits.close_seconds
        for start in range(0, len(left), self._limits.batch_size):
            batch = left[start : start + self._limits.batch_size]
            remaining = until - loop.time()
            if remaining <= 0:
                self._dropped("shutdown", len(left) - start)
                return
            try:
                await asyncio.wait_for(self._send(batch), remaining)
            except TimeoutError:
                self._dropped("shutdown", len(left) - start)
                return
