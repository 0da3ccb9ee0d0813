"""Dynamic batching: concurrent requests for one model version share one predict call.

The batch forms from the queue, not from a timer: while the model computes, requests
pile up; when it is free, the worker takes everything waiting (up to
``max_batch_size`` rows), optionally waits up to ``max_wait`` for more, makes one call
and hands each caller its slice, in order. A bounded queue sheds load with
``ResourceExhausted`` instead of growing without limit.

Two batchers share these rules: :class:`Batcher` for callers on an event loop (a worker
task, compute on an executor thread) and :class:`ThreadBatcher` for callers on threads
of a thread-pool server (no worker: the caller that finds the model idle computes).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable, Sequence, Sized
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from mlbackend_runtime.errors import FailedPrecondition, ResourceExhausted
from mlbackend_serving.core.model import Matrix, Predictions

PredictFn = Callable[[Matrix], Predictions]
Rows = TypeVar("Rows", bound=Sized)
Answer = TypeVar("Answer")


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


class _Queued(Protocol):
    @property
    def rows(self) -> Matrix: ...

    @property
    def enqueued(self) -> float: ...


Item = TypeVar("Item", bound=_Queued)


class _Batching(Generic[Item]):
    """What both batchers share: the queue, its limit, forming a batch, the call."""

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
        self._queue: collections.deque[Item] = collections.deque()
        self._closed = False
        self.calls = 0
        """Predict calls made (for tests and the metadata of the version)."""
        self._prepare()

    def _prepare(self) -> None:
        """The subclass's own state."""

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _check_admission(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"{self._name} is being unloaded")
        if len(self._queue) >= self.policy.max_queue:
            raise ResourceExhausted(
                f"{self._name}: {len(self._queue)} requests queued, the limit; retry later"
            )

    def _take(self, batch: list[Item] | None = None) -> list[Item]:
        """Move waiting requests into ``batch`` while they fit (the first always does)."""
        batch = [] if batch is None else batch
        total = self._rows(batch)
        limit = self.policy.max_batch_size
        queue = self._queue
        while queue:
            size = len(queue[0].rows)
            if batch and total + size > limit:
                break
            batch.append(queue.popleft())
            total += size
        return batch

    def _took_more(self, batch: list[Item]) -> bool:
        """Take what waits into ``batch``; False once it is full or the next does not fit."""
        before = len(batch)
        self._take(batch)
        if len(batch) == before and self._queue:
            return False
        return self._rows(batch) < self.policy.max_batch_size

    @staticmethod
    def _rows(batch: Sequence[_Queued]) -> int:
        return sum(len(p.rows) for p in batch)

    def _inputs(self, batch: Sequence[Item]) -> tuple[Matrix, float]:
        """The batch's rows as one matrix; its start time (queue times recorded)."""
        started = time.perf_counter()
        for item in batch:
            self._observer.queued(started - item.enqueued)
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        return rows, started

    def _called(self, rows: Matrix, batch: Sequence[Item], started: float) -> None:
        self.calls += 1
        self._observer.batch(len(rows), len(batch), time.perf_counter() - started)

    @staticmethod
    def _slices(result: Predictions, batch: Sequence[Item]) -> list[Predictions]:
        """Each caller's share of ``result``, in batch order."""
        if len(batch) == 1:
            return [result]
        slices, start = [], 0
        for item in batch:
            stop = start + len(item.rows)
            slices.append(result.rows(start, stop))
            start = stop
        return slices


@dataclass
class _Pending:
    rows: Matrix
    future: asyncio.Future[Predictions]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher(_Batching[_Pending]):
    """One per loaded model version; ``await predict(rows)`` from any request handler."""

    def _prepare(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def predict(self, rows: Matrix) -> Predictions:
        self._check_admission()
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
            rows, started = self._inputs(batch)
            try:
                result = await loop.run_in_executor(self._executor, self._predict, rows)
            except Exception as exc:  # only this batch fails; the worker carries on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            finally:
                self._called(rows, batch, started)
            for p, share in zip(batch, self._slices(result, batch), strict=True):
                if not p.future.done():
                    p.future.set_result(share)

    async def _fill(self, batch: list[_Pending], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while (remaining := deadline - loop.time()) > 0:
            if not self._queue:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    return
            if not self._took_more(batch):
                return


class _Waiter:
    """One request inside a :class:`ThreadBatcher`; its lock is released once it has an
    outcome, or once it is its turn to lead the next batch."""

    __slots__ = ("_signal", "enqueued", "error", "lead", "result", "rows")

    def __init__(self, rows: Matrix, enqueued: float) -> None:
        self.rows = rows
        self.result: Predictions | None = None
        self.error: BaseException | None = None
        self.lead = False
        self.enqueued = enqueued
        # A bare lock is the cheapest one-shot signal between threads.
        self._signal = threading.Lock()
        self._signal.acquire()

    def wake(self) -> None:
        self._signal.release()

    def wait(self) -> None:
        self._signal.acquire()

    def outcome(self) -> Predictions:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class ThreadBatcher(_Batching[_Waiter]):
    """The batcher of the thread-pool front: ``run(rows)`` blocks its calling thread.

    No worker thread and no hop: the caller that finds the model idle leads — it takes
    every request waiting (its own first, up to ``max_batch_size`` rows), optionally
    waits up to ``max_wait`` for more, makes the one predict call on its own thread,
    hands each caller its slice, passes the lead to the oldest request still queued, and
    returns. The others sleep until their result (or their turn to lead) arrives. A
    caller that finds the model idle when no batch waits to fill (``max_wait`` 0) calls
    it alone, without a queue entry.
    """

    def _prepare(self) -> None:
        self._mutex = threading.Lock()
        self._arrived = threading.Condition(self._mutex)
        self._idle = threading.Condition(self._mutex)
        self._busy = False
        self._beside = 0
        """Calls running next to the batches (``run_beside``)."""

    def run(self, rows: Matrix) -> Predictions:
        """Predict ``rows`` (blocking), in a batch with whatever else is waiting."""
        entered = time.perf_counter()
        with self._mutex:
            self._check_admission()
            if not self._busy and (
                self.policy.max_wait <= 0 or len(rows) >= self.policy.max_batch_size
            ):
                # Idle, and nothing to wait for: a batch of one, with no queue entry and
                # no hand-over of the result (the usual case at low concurrency).
                self._busy = True
                me = None
            else:
                me = _Waiter(rows, entered)
                self._queue.append(me)
                if self._busy:
                    self._arrived.notify()
                else:
                    self._busy = me.lead = True
        if me is None:
            return self._alone(rows, entered)
        if not me.lead:
            me.wait()
            if not me.lead:
                return me.outcome()
        self._lead()
        return me.outcome()

    async def predict(self, rows: Matrix) -> Predictions:
        """For callers on an event loop (the asyncio front, tests)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run, rows)

    def run_beside(self, rows: Rows, predict: Callable[[Rows], Answer]) -> Answer:
        """``predict(rows)`` on the calling thread now, next to any batch running or
        waiting: for a model whose call costs so little that queueing for a shared one
        would cost more (``ServingCore.predict_light``, ``predict_row``). Counted as a
        batch of one; an unload drains it too."""
        with self._mutex:
            if self._closed:
                raise FailedPrecondition(f"{self._name} is being unloaded")
            self._beside += 1
        started = time.perf_counter()
        try:
            return predict(rows)
        finally:
            seconds = time.perf_counter() - started
            with self._mutex:
                self._beside -= 1
                self.calls += 1
                if self._closed and not self._beside:
                    self._idle.notify_all()
            self._observer.queued(0.0)
            self._observer.batch(len(rows), 1, seconds)

    def _alone(self, rows: Matrix, entered: float) -> Predictions:
        started = time.perf_counter()
        self._observer.queued(started - entered)
        try:
            return self._predict(rows)
        finally:
            self.calls += 1
            self._observer.batch(len(rows), 1, time.perf_counter() - started)
            self._pass_lead()

    def _lead(self) -> None:
        with self._mutex:
            batch = self._take()
            if self.policy.max_wait > 0 and self._rows(batch) < self.policy.max_batch_size:
                self._fill(batch, time.monotonic() + self.policy.max_wait)
        try:
            self._compute(batch)
        finally:
            self._pass_lead()
            for waiter in batch[1:]:  # the first is the leader itself
                waiter.wake()

    def _pass_lead(self) -> None:
        """The model is free: the oldest request still queued leads the next batch."""
        with self._mutex:
            if self._queue:
                successor = self._queue[0]
                successor.lead = True
                successor.wake()
            else:
                self._busy = False
                if self._closed:  # only ``drain`` waits for idle, after closing
                    self._idle.notify_all()

    def _fill(self, batch: list[_Waiter], deadline: float) -> None:
        """Wait (mutex held, released while waiting) for the batch to fill or time out."""
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._queue and not self._arrived.wait(remaining):
                return
            if not self._took_more(batch):
                return

    def _compute(self, batch: list[_Waiter]) -> None:
        rows, started = self._inputs(batch)
        try:
            result = self._predict(rows)
        except Exception as exc:  # only this batch fails
            for waiter in batch:
                waiter.error = exc
            return
        finally:
            self._called(rows, batch, started)
        for waiter, share in zip(batch, self._slices(result, batch), strict=True):
            waiter.result = share

    def drain(self) -> None:
        """Refuse new requests, wait for the queued ones to finish (blocking)."""
        with self._mutex:
            self._closed = True
            while self._busy or self._queue or self._beside:
                self._idle.wait()

    async def close(self) -> None:
        """Finish what is queued, then refuse new requests."""
        await asyncio.to_thread(self.drain)
