"""Where the thread front runs predictions: two threads of their own, unless a loaded
model waits for its batches to fill (then as many threads as requests can wait)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from mlbackend_models.loader import LoadPolicy
from mlbackend_serving.core.model_dir import ModelDirectory, write_model_version
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.transport.threaded import PredictionPool

FEATURES = ["a", "b", "c"]


@pytest.fixture
def core(tmp_path: Path) -> Iterator[ServingCore]:
    x, y = make_classification(n_samples=60, n_features=3, n_informative=2, n_redundant=0,
                               random_state=0)  # fmt: skip
    model = LogisticRegression().fit(x, y)
    example = x[:2].tolist()
    write_model_version(tmp_path, "quick", 1, model, FEATURES, input_example=example,
                        batching={"max_batch_size": 32, "max_wait_ms": 0})  # fmt: skip
    write_model_version(tmp_path, "waiting", 1, model, FEATURES, input_example=example,
                        batching={"max_batch_size": 32, "max_wait_ms": 2})  # fmt: skip
    with ThreadPoolExecutor(2) as executor:
        yield ServingCore(executor, directory=ModelDirectory(tmp_path, LoadPolicy()), threaded=True)


def _thread_name(pool: PredictionPool) -> str:
    return pool.submit(lambda: threading.current_thread().name).result(timeout=5)


async def test_predictions_leave_the_small_pool_while_a_model_waits_for_batches(
    core: ServingCore,
) -> None:
    pool = PredictionPool(core, wide_threads=8, initializer=lambda: None)
    try:
        await core.load("quick", 1)
        assert not core.fills_batches
        assert _thread_name(pool).startswith("serving-predict")

        await core.load("waiting", 1)
        assert core.fills_batches
        assert _thread_name(pool).startswith("serving-batch")

        await core.unload("waiting", None)
        assert not core.fills_batches
        assert _thread_name(pool).startswith("serving-predict")
    finally:
        pool.shutdown()


def test_shutting_the_pool_down_stops_both_halves(core: ServingCore) -> None:
    pool = PredictionPool(core, wide_threads=8, initializer=lambda: None)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(print)
    with pytest.raises(RuntimeError):
        pool.wide.submit(print)
