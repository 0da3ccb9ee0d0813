"""Dynamic batching: concurrent requests for one model version share one predict call.

The batch forms from the queue, not from a timer: while the model computes, requests
pile up; when it is free, the worker takes everything waiting (up to
``max_batch_size`` rows), optionally waits up to ``max_wait`` for more, makes one call
and hands each caller its slice, in order. A bounded queue sheds load with
``ResourceExhausted`` instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from mlbackend_runtime.errors import FailedPrecondition, ResourceExhausted
from mlbackend_serving.core.model import Matrix, Predictions

PredictFn = Callable[[Matrix], Predictions]


@dataclass(frozen=True)
class BatchingPolicy:
    max_batch_size: int = 32
    """Rows per predict call; 1 turns batching off (a multi-row request still runs whole)."""
    max_wait: float = 0.0
    """Seconds a non-full batch may wait for more requests (0: take what is waiting)."""
    max_queue: int = 1024
    """Requests waiting beyond which new ones are refused."""


DEFAULT_BATCHING = BatchingPolicy()


class BatchObserver:
    """Receives per-batch figures (metrics); the default ignores them."""

    def batch(self, rows: int, requests: int, seconds: float) -> None:
        pass

    def queued(self, seconds: float) -> None:
        pass


@dataclass
class _Pending:
    rows: Matrix
    future: asyncio.Future[Predictions]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """One per loaded model version; ``await predict(rows)`` from any request handler."""

    def __init__(
        self,
        predict: PredictFn,
        executor: Executor,
        policy: BatchingPolicy = DEFAULT_BATCHING,
        observer: BatchObserver | None = None,
        name: str = "model",
    ) -> None:
        self._predict = predict
        self._executor = executor
        self.policy = policy
        self._observer = observer or BatchObserver()
        self._name = name
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._worker: asyncio.Task[None] | None = None
        self.calls = 0
        """Predict calls made (for tests and the metadata of the version)."""

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def predict(self, rows: Matrix) -> Predictions:
        if self._closed:
            raise FailedPrecondition(f"{self._name} is being unloaded")
        if len(self._queue) >= self.policy.max_queue:
            raise ResourceExhausted(
                f"{self._name}: {len(self._queue)} requests queued, the limit; retry later"
            )
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())
        pending = _Pending(rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    async def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        self._closed = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take()
            if self.policy.max_wait > 0 and self._rows(batch) < self.policy.max_batch_size:
                await self._fill(batch, loop.time() + self.policy.max_wait)
            batch = [p for p in batch if not p.future.done()]  # callers that gave up
            if not batch:
                continue
            started = time.perf_counter()
            for p in batch:
                self._observer.queued(started - p.enqueued)
            rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
            try:
                result = await loop.run_in_executor(self._executor, self._predict, rows)
            except Exception as exc:  # only this batch fails; the worker carries on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            finally:
                self.calls += 1
                self._observer.batch(len(rows), len(batch), time.perf_counter() - started)
            start = 0
            for p in batch:
                stop = start + len(p.rows)
                if not p.future.done():
                    p.future.set_result(result.rows(start, stop))
                start = stop

    def _take(self, batch: list[_Pending] | None = None) -> list[_Pending]:
        """Move waiting requests into ``batch`` while they fit (the first always does)."""
        batch = [] if batch is None else batch
        total = self._rows(batch)
        while self._queue:
            size = len(self._queue[0].rows)
            if batch and total + size > self.policy.max_batch_size:
                break
            batch.append(self._queue.popleft())
            total += size
        return batch

    async def _fill(self, batch: list[_Pending], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while self._rows(batch) < self.policy.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if not self._queue:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    return
            before = len(batch)
            self._take(batch)
            if len(batch) == before and self._queue:
                return  # the next request does not fit

    @staticmethod
    def _rows(batch: list[_Pending]) -> int:
        return sum(len(p.rows) for p in batch)
