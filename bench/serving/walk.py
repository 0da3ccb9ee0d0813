"""Serving's tree walk in-process: scikit-learn's own method, the numpy walk and the C
walk on the same fitted models and rows, in one run, with the ratios.

Models: the benchmark's two (RandomForest 100 trees depth 8, HistGradientBoosting
defaults), the two recipes ``mlbackend train`` makes (a Pipeline of one 300-iteration
HGB; imputer + 200-tree forest), a 4-class HGB and an HGB regressor. Batches of 1 and
32 rows. Every timing is the median of 5 rounds, each bounded in count and time; the
three paths are checked to give identical outputs before they are timed.

    .venv/bin/python bench/serving/walk.py            # about a minute
    .venv/bin/python bench/serving/walk.py --quick    # fewer models, shorter rounds
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from mlbackend_serving.core import fastpath

ROUNDS = 5


def _models(quick: bool) -> list[tuple[str, Any, bool]]:
    """(name, unfitted model, is a regressor)."""
    models: list[tuple[str, Any, bool]] = [
        ("rf-100-depth8", RandomForestClassifier(100, max_depth=8, random_state=0), False),
        ("hgb", HistGradientBoostingClassifier(random_state=0), False),
    ]
    if quick:
        return models
    return [
        *models,
        (
            "train-recipe-hgb",
            Pipeline(
                [
                    (
                        "model",
                        HistGradientBoostingClassifier(
                            max_iter=300, learning_rate=0.05, class_weight="balanced"
                        ),
                    )
                ]
            ),
            False,
        ),
        (
            "train-recipe-forest",
            Pipeline(
                [
                    ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                    ("model", RandomForestClassifier(200, min_samples_leaf=5, random_state=0)),
                ]
            ),
            False,
        ),
        ("hgb-4-classes", HistGradientBoostingClassifier(random_state=0), False),
        ("hgb-regressor", HistGradientBoostingRegressor(random_state=0), True),
    ]


def _seconds_per_call(fn: Callable[[Any], Any], rows: Any, budget: float) -> float:
    """Median over ROUNDS of the mean time per call; each round at most ``budget``
    seconds and 20,000 calls."""
    fn(rows)
    means = []
    for _ in range(ROUNDS):
        calls, started = 0, time.perf_counter()
        while calls < 20_000 and time.perf_counter() - started < budget:
            fn(rows)
            calls += 1
        means.append((time.perf_counter() - started) / calls)
    return statistics.median(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not fastpath.NATIVE:
        raise SystemExit("the C walk is not built: run `make venv` (needs gcc)")
    budget = 0.1 if args.quick else 0.3
    x, y = make_classification(
        n_samples=20_000, n_features=10, n_informative=6, n_classes=4, random_state=0
    )
    x[np.random.default_rng(0).random(x.shape) < 0.02] = np.nan  # a few holes
    binary = (y > 1).astype(int)
    complete = x[~np.isnan(x).any(axis=1)]
    print(f"{'model':22s} {'rows':>4s} {'sklearn µs':>11s} {'numpy µs':>9s} {'C µs':>7s}"
          f" {'x sklearn':>9s} {'x numpy':>8s}")  # fmt: skip
    with threadpool_limits(1):  # as serving runs models
        for name, model, regressor in _models(args.quick):
            forest_like = isinstance(model, RandomForestClassifier)
            train = np.nan_to_num(x) if forest_like else x
            target = y if name == "hgb-4-classes" else binary
            if regressor:
                target = np.nan_to_num(train[:, 0]) * 3 + np.nan_to_num(train[:, 1])
            model.fit(train, target)
            own = model.predict if regressor else model.predict_proba
            build = fastpath.fast_predict if regressor else fastpath.fast_proba
            numpy_walk, c_walk = build(model, native=False), build(model, native=True)
            assert numpy_walk is not None and c_walk is not None, name
            for size in (1, 32):
                rows = (complete if forest_like else x)[:size]
                expected = np.asarray(own(rows), dtype=np.float64)
                for walk in (numpy_walk, c_walk):
                    assert np.array_equal(walk(rows), expected), name
                times = [_seconds_per_call(f, rows, budget) for f in (own, numpy_walk, c_walk)]
                mine, theirs, npy = times[2], times[0], times[1]
                print(
                    f"{name:22s} {size:4d} {theirs * 1e6:11.1f} {npy * 1e6:9.1f}"
                    f" {mine * 1e6:7.1f} {theirs / mine:9.1f} {npy / mine:8.1f}"
                )


if __name__ == "__main__":
    main()
