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
    max_records: int = 10_000
    batch_size: int = 500
    flush_seconds: float = 0.2
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
        self._queue: asyncio.Queue[PredictionRecord] = asyncio.Queue(limits.max_records)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._sink is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="records")

    def offer(self, record: PredictionRecord) -> None:
        if self._sink is None:
            self._dropped("not_configured", 1)
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._dropped("queue_full", 1)

    async def _next_batch(self) -> list[PredictionRecord]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        until = loop.time() + self._limits.flush_seconds
        while len(batch) < self._limits.batch_size:
            while not self._queue.empty() and len(batch) < self._limits.batch_size:
                batch.append(self._queue.get_nowait())
            left = until - loop.time()
            if len(batch) >= self._limits.batch_size or left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

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
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
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
