"""Dynamic batching: order, coalescing under concurrency, queue limit, failures per batch."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from mlbackend_runtime.errors import ResourceExhausted
from mlbackend_serving.core.batching import Batcher, BatchingPolicy
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
