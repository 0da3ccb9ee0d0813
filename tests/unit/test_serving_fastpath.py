"""The vectorised tree-ensemble predict gives exactly scikit-learn's probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import (
    ExtraTreesClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression

from mlbackend_serving.core.fastpath import checked_fast_proba, fast_proba


def _data(missing: bool = False, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=3000, n_features=6, n_informative=4, n_classes=classes, random_state=0
    )
    if missing:
        x[np.random.default_rng(1).random(x.shape) < 0.1] = np.nan
    return x, y


@pytest.mark.parametrize(
    ("estimator", "missing"),
    [
        (RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0), False),
        (RandomForestClassifier(n_estimators=10, random_state=0), True),
        (ExtraTreesClassifier(n_estimators=10, random_state=0), False),
        (HistGradientBoostingClassifier(max_iter=30, random_state=0), False),
        (HistGradientBoostingClassifier(max_iter=30, random_state=0), True),
    ],
)
def test_identical_to_predict_proba(estimator: Any, missing: bool) -> None:
    x, y = _data(missing)
    estimator.fit(x, y)
    fast = fast_proba(estimator)
    assert fast is not None
    # The checked path keeps the fast one (it agreed on the probe rows)…
    predict = checked_fast_proba(estimator, x.shape[1], x[:4])
    assert predict != estimator.predict_proba
    # …and it agrees on one row, a few, many; rows with and without a missing value;
    # values beyond every threshold (scikit-learn's forests refuse infinities).
    complete = x[~np.isnan(x).any(axis=1)]
    holed = x[np.isnan(x).any(axis=1)]
    extreme = complete[:8].copy()
    extreme[::2, 0], extreme[1::2, 1] = 1e30, -1e30
    batches = [x[:1], x[:32], x[1000:2000], complete[:1], complete[:2], extreme, extreme[:1]]
    if len(holed):
        batches += [holed[:1], holed[:5]]
    for rows in batches:
        assert np.array_equal(fast(rows), estimator.predict_proba(rows))
        assert np.array_equal(predict(rows), estimator.predict_proba(rows))


def test_unsupported_models_use_their_own_method() -> None:
    x, y = _data(classes=3)
    multiclass = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(x, y)
    linear = LogisticRegression().fit(x, y)
    for estimator in (multiclass, linear):
        assert fast_proba(estimator) is None
        assert checked_fast_proba(estimator, x.shape[1], None) == estimator.predict_proba


def test_a_fast_path_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    from mlbackend_serving.core import fastpath

    monkeypatch.setattr(fastpath, "fast_proba", lambda e: lambda rows: np.zeros((len(rows), 2)))
    assert checked_fast_proba(forest, x.shape[1], None) == forest.predict_proba
