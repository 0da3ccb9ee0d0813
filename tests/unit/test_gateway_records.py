"""The gateway's record queue: batches by size or time, bounded, drained on close."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from mlbackend_gateway.core.model import PredictionRecord
from mlbackend_gateway.core.records import QueueLimits, RecordQueue


def record(n: int) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=f"p{n}", request_id="r", time=datetime.now(UTC), model="m", version=1,
        variant="", experiment="", shadow=False, entity_key={"user_id": f"u{n}"},
        features={}, output=None, latency_seconds=0.001, feature_service="",
    )  # fmt: skip


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    async def send(self, records: Sequence[PredictionRecord]) -> None:
        if self.fail:
            raise ConnectionError("monitoring down")
        self.batches.append([r.prediction_id for r in records])


def queue(sink: Sink | None, limits: QueueLimits) -> tuple[RecordQueue, Counter[str], list[int]]:
    dropped: Counter[str] = Counter()
    sent: list[int] = []

    def drop(reason: str, n: int) -> None:
        dropped[reason] += n

    return RecordQueue(sink, limits, drop, sent.append), dropped, sent


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)


async def test_full_batches_go_at_once_and_the_rest_after_the_flush_time() -> None:
    sink = Sink()
    records, _, sent = queue(sink, QueueLimits(batch_size=3, flush_seconds=0.3))
    records.start()
    started = asyncio.get_running_loop().time()
    for n in range(7):
        records.offer(record(n))
    await until(lambda: len(sink.batches) >= 2)
    assert sink.batches == [["p0", "p1", "p2"], ["p3", "p4", "p5"]]
    assert asyncio.get_running_loop().time() - started < 0.25
    await until(lambda: len(sink.batches) >= 3)
    assert sink.batches[2] == ["p6"]
    assert asyncio.get_running_loop().time() - started >= 0.29
    assert sent == [3, 3, 1]
    await records.close()


async def test_records_arriving_one_by_one_share_a_batch() -> None:
    sink = Sink()
    records, _, _ = queue(sink, QueueLimits(batch_size=100, flush_seconds=0.2))
    records.start()
    for n in range(5):
        records.offer(record(n))
        await asyncio.sleep(0.01)
    await until(lambda: bool(sink.batches))
    assert sink.batches == [[f"p{n}" for n in range(5)]]
    await records.close()


async def test_overflow_and_missing_monitoring_are_dropped_and_counted() -> None:
    records, dropped, _ = queue(Sink(), QueueLimits(max_records=2))
    for n in range(5):
        records.offer(record(n))
    assert dropped == {"queue_full": 3}
    unconfigured, dropped, _ = queue(None, QueueLimits())
    unconfigured.offer(record(0))
    assert dropped == {"not_configured": 1}


async def test_a_batch_the_sink_refuses_is_dropped_not_retried() -> None:
    records, dropped, sent = queue(Sink(fail=True), QueueLimits(batch_size=2, flush_seconds=0.05))
    records.start()
    for n in range(3):
        records.offer(record(n))
    await until(lambda: dropped["unavailable"] >= 3)
    assert dropped == {"unavailable": 3} and sent == []
    await records.close()


async def test_close_sends_what_is_still_queued() -> None:
    sink = Sink()
    records, _, _ = queue(sink, QueueLimits(batch_size=2, flush_seconds=60))
    records.start()
    records.offer(record(0))
    await asyncio.sleep(0.05)  # the drain task now waits for a second record
    records.offer(record(1))
    records.offer(record(2))
    await records.close()
    assert [p for batch in sink.batches for p in batch] == ["p0", "p1", "p2"]
