"""Dynamic batching: order, coalescing under concurrency, queue limit, failures per batch."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from mlbackend_runtime.errors import FailedPrecondition, ResourceExhausted
from mlbackend_serving.core.batching import (
    Batcher,
    BatchingPolicy,
    BatchObserver,
    ThreadBatcher,
)
from mlbackend_serving.core.model import Predictions


class SlowEcho:
    """A model whose output is its input's first column; records its batch sizes."""

    def __init__(self, seconds: float = 0.005) -> None:
        self.seconds = seconds
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, rows: Any) -> Predictions:
        self.release.wait(5)
        time.sleep(self.seconds)
        if (rows[:, 0] < 0).any():
            raise ValueError("negative input")
        self.batches.append(len(rows))
        return Predictions(values=rows[:, 0].copy())


@pytest.fixture
def executor() -> Any:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _rows(*values: float) -> Any:
    return np.array([[v, 0.0] for v in values])


async def test_results_come_back_in_order_and_coalesce(executor: Any) -> None:
    model = SlowEcho()
    batcher = Batcher(model, executor, BatchingPolicy(max_batch_size=32))
    results = await asyncio.gather(*(batcher.predict(_rows(i, i + 0.5)) for i in range(40)))
    for i, result in enumerate(results):
        assert result.values is not None
        assert result.values.tolist() == [i, i + 0.5]
    assert sum(model.batches) == 80
    assert len(model.batches) < 40, model.batches
    assert max(model.batches) <= 32


async def test_batching_off_calls_once_per_request(executor: Any) -> None:
    model = SlowEcho(0)
    batcher = Batcher(model, executor, BatchingPolicy(max_batch_size=1))
    await asyncio.gather(*(batcher.predict(_rows(i)) for i in range(10)))
    assert model.batches == [1] * 10


async def test_max_wait_lets_a_batch_fill(executor: Any) -> None:
    model = SlowEcho(0)
    batcher = Batcher(model, executor, BatchingPolicy(max_batch_size=4, max_wait=0.2))

    async def late(i: int) -> Predictions:
        await asyncio.sleep(0.01 * i)
        return await batcher.predict(_rows(i))

    await asyncio.gather(*(late(i) for i in range(4)))
    assert model.batches == [4]


async def test_full_queue_is_refused(executor: Any) -> None:
    model = SlowEcho(0)
    model.release.clear()  # the model hangs until released: requests pile up
    batcher = Batcher(model, executor, BatchingPolicy(max_batch_size=1, max_queue=3))
    first = asyncio.ensure_future(batcher.predict(_rows(0)))
    await asyncio.sleep(0.05)  # the first request is in the model, the queue is empty
    waiting = [asyncio.ensure_future(batcher.predict(_rows(i))) for i in range(1, 4)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="3 requests queued"):
        await batcher.predict(_rows(9))
    model.release.set()
    results = await asyncio.gather(first, *waiting)
    assert [r.values.tolist() for r in results if r.values is not None] == [[0], [1], [2], [3]]


async def test_exception_fails_only_its_batch(executor: Any) -> None:
    model = SlowEcho()
    model.release.clear()
    batcher = Batcher(model, executor, BatchingPolicy(max_batch_size=2))
    first = asyncio.ensure_future(batcher.predict(_rows(1)))
    await asyncio.sleep(0.05)
    bad = [asyncio.ensure_future(batcher.predict(_rows(v))) for v in (-1, 2)]  # one batch
    await asyncio.sleep(0)
    good = [asyncio.ensure_future(batcher.predict(_rows(v))) for v in (3, 4)]  # the next
    model.release.set()
    assert (await first).values.tolist() == [1]  # type: ignore[union-attr]
    for future in bad:
        with pytest.raises(ValueError, match="negative input"):
            await future
    assert [(await f).values.tolist() for f in good] == [[3], [4]]  # type: ignore[union-attr]
    # The worker survived: later requests are served.
    assert (await batcher.predict(_rows(5))).values.tolist() == [5]  # type: ignore[union-attr]
    await batcher.close()


# --- ThreadBatcher: the thread-pool front's batcher (callers block their own thread) ------

WAIT = 10.0
"""Bound of every wait below: a broken batcher fails the test instead of hanging it."""


def _until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


class Callers:
    """Threads calling ``batcher.run``; their results (or errors) by index."""

    def __init__(self, batcher: ThreadBatcher) -> None:
        self.batcher = batcher
        self.results: dict[int, Any] = {}
        self.threads: list[threading.Thread] = []

    def start(self, index: int, rows: Any) -> None:
        def call() -> None:
            try:
                self.results[index] = self.batcher.run(rows)
            except Exception as exc:
                self.results[index] = exc

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive(), "a caller never got its result"


class Entered(SlowEcho):
    """SlowEcho that says when a batch has entered the model."""

    def __init__(self) -> None:
        super().__init__(0)
        self.calls = 0

    def __call__(self, rows: Any) -> Predictions:
        self.calls += 1
        return super().__call__(rows)


def _first_in_the_model(
    executor: Any, policy: BatchingPolicy, rows: Any
) -> tuple[Entered, ThreadBatcher, Callers]:
    """A batcher whose first caller leads and hangs inside the model until released."""
    model = Entered()
    model.release.clear()
    batcher = ThreadBatcher(model, executor, policy)
    callers = Callers(batcher)
    callers.start(0, rows)
    _until(lambda: model.calls == 1)
    return model, batcher, callers


def test_thread_batcher_coalesces_what_waits_in_order(executor: Any) -> None:
    model, batcher, callers = _first_in_the_model(
        executor, BatchingPolicy(max_batch_size=32), _rows(0, 0.5)
    )
    for i in range(1, 40):
        callers.start(i, _rows(i, i + 0.5))
    _until(lambda: batcher.queued == 39)
    model.release.set()
    callers.join()
    for i in range(40):
        assert callers.results[i].values.tolist() == [i, i + 0.5]
    assert model.batches == [2, 32, 32, 14]  # 2 rows a request, whole requests only
    assert batcher.calls == 4


def test_thread_batcher_off_calls_once_per_request(executor: Any) -> None:
    model, batcher, callers = _first_in_the_model(
        executor, BatchingPolicy(max_batch_size=1), _rows(0)
    )
    for i in range(1, 6):
        callers.start(i, _rows(i))
    _until(lambda: batcher.queued == 5)
    model.release.set()
    callers.join()
    assert model.batches == [1] * 6
    assert [callers.results[i].values.tolist() for i in range(6)] == [[i] for i in range(6)]


def test_thread_batcher_max_wait_lets_a_batch_fill(executor: Any) -> None:
    model = Entered()
    # Generous: the batch fills long before, and then does not wait any longer.
    batcher = ThreadBatcher(model, executor, BatchingPolicy(max_batch_size=4, max_wait=WAIT))
    callers = Callers(batcher)
    for i in range(4):
        callers.start(i, _rows(i))
    callers.join()
    assert model.batches == [4]


def test_thread_batcher_refuses_beyond_its_queue(executor: Any) -> None:
    model, batcher, callers = _first_in_the_model(
        executor, BatchingPolicy(max_batch_size=1, max_queue=3), _rows(0)
    )
    for i in range(1, 4):
        callers.start(i, _rows(i))
    _until(lambda: batcher.queued == 3)
    with pytest.raises(ResourceExhausted, match="3 requests queued"):
        batcher.run(_rows(9))
    model.release.set()
    callers.join()
    assert [callers.results[i].values.tolist() for i in range(4)] == [[0], [1], [2], [3]]


def test_thread_batcher_exception_fails_only_its_batch(executor: Any) -> None:
    model, batcher, callers = _first_in_the_model(
        executor, BatchingPolicy(max_batch_size=2), _rows(1)
    )
    callers.start(1, _rows(-1))
    _until(lambda: batcher.queued == 1)
    callers.start(2, _rows(2))  # the same batch as -1
    _until(lambda: batcher.queued == 2)
    callers.start(3, _rows(3))
    _until(lambda: batcher.queued == 3)
    callers.start(4, _rows(4))  # the next batch
    _until(lambda: batcher.queued == 4)
    model.release.set()
    callers.join()
    assert callers.results[0].values.tolist() == [1]
    for i in (1, 2):
        assert isinstance(callers.results[i], ValueError)
    assert [callers.results[i].values.tolist() for i in (3, 4)] == [[3], [4]]
    assert batcher.run(_rows(5)).values.tolist() == [5]  # type: ignore[union-attr]


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.queued_for: list[float] = []

    def batch(self, rows: int, requests: int, seconds: float) -> None:
        self.batches.append((rows, requests))

    def queued(self, seconds: float) -> None:
        self.queued_for.append(seconds)


def test_thread_batcher_alone_on_an_idle_model(executor: Any) -> None:
    """An idle model with nothing to wait for is called by its caller alone: the
    result is the caller's own, an error reaches only it, and both are recorded like
    any batch."""
    model, observer = SlowEcho(0), Recorder()
    batcher = ThreadBatcher(model, executor, BatchingPolicy(max_batch_size=4), observer)
    callers = Callers(batcher)  # bounded: a batcher left busy would hang a call
    for i, rows in enumerate([_rows(3, 4), _rows(-1), _rows(5)]):
        callers.start(i, rows)
        callers.join()
    assert callers.results[0].values.tolist() == [3, 4]
    assert isinstance(callers.results[1], ValueError)
    assert callers.results[2].values.tolist() == [5]  # the failure left it idle
    assert model.batches == [2, 1]
    assert observer.batches == [(2, 1), (1, 1), (1, 1)]
    assert len(observer.queued_for) == 3 and all(0 <= s < WAIT for s in observer.queued_for)
    assert batcher.calls == 3 and batcher.queued == 0


async def test_thread_batcher_close_drains_then_refuses(executor: Any) -> None:
    model, batcher, callers = _first_in_the_model(
        executor, BatchingPolicy(max_batch_size=1), _rows(0)
    )
    for i in (1, 2):
        callers.start(i, _rows(i))
    _until(lambda: batcher.queued == 2)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # queued requests are still being served
    model.release.set()
    await asyncio.wait_for(closing, WAIT)
    callers.join()
    assert sorted(r.values.tolist()[0] for r in callers.results.values()) == [0, 1, 2]
    with pytest.raises(FailedPrecondition, match="being unloaded"):
        batcher.run(_rows(9))
    # And from an event loop, as the asyncio front calls it.
    with pytest.raises(FailedPrecondition):
        await batcher.predict(_rows(9))


def test_thread_batcher_runs_beside_a_busy_model_and_counts_it(executor: Any) -> None:
    """``run_beside`` calls its own function at once, even while a batch is in the
    model and others wait; it is counted and recorded as a batch of one."""
    observer = Recorder()
    model, batcher, callers = _first_in_the_model(
        executor, BatchingPolicy(max_batch_size=1), _rows(0)
    )
    batcher._observer = observer  # the first caller's batch ends after the assertions
    callers.start(1, _rows(1))
    _until(lambda: batcher.queued == 1)
    beside = SlowEcho(0)
    result = batcher.run_beside(_rows(7, 8), beside)
    assert result.values.tolist() == [7, 8] and beside.batches == [2]
    assert batcher.queued == 1 and model.batches == []  # the batch is still in the model
    assert observer.batches == [(2, 1)] and observer.queued_for == [0.0]
    model.release.set()
    callers.join()
    assert batcher.calls == 3


async def test_thread_batcher_close_drains_calls_beside(executor: Any) -> None:
    """An unload waits for a call running beside the batches, then refuses new ones;
    an error in one reaches its caller only."""
    batcher = ThreadBatcher(SlowEcho(0), executor, BatchingPolicy())
    with pytest.raises(ValueError, match="negative"):
        batcher.run_beside(_rows(-1), SlowEcho(0))
    inside = Entered()
    inside.release.clear()
    done: list[Any] = []
    thread = threading.Thread(
        target=lambda: done.append(batcher.run_beside(_rows(4), inside)), daemon=True
    )
    thread.start()
    _until(lambda: inside.calls == 1)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    inside.release.set()
    await asyncio.wait_for(closing, WAIT)
    thread.join(WAIT)
    assert done[0].values.tolist() == [4]
    with pytest.raises(FailedPrecondition, match="being unloaded"):
        batcher.run_beside(_rows(9), inside)
