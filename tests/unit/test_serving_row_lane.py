"""ModelInfer's single-row lane gives exactly what the matrix path gives: the same
probabilities and values bit for bit, the same label, the same response bytes.

- ``fastpath.row_of``: each supported model's single-row form against its matrix form;
- ``LoadedModel.predict_row`` against ``predict`` / ``scores``;
- ``wire.row_values``: which requests take the lane (one row, finite FP32/FP64 values);
- ``wire.infer_row_response`` against protobuf: ``test_oip_wire.py``.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from mlbackend_serving.core import fastpath
from mlbackend_serving.core.model import (
    FeatureSpec,
    LoadedModel,
    ModelKey,
    OutputKind,
    OutputSpec,
    Signature,
)
from mlbackend_serving.transport import wire

WIDTH = 6
X, Y = make_classification(600, WIDTH, n_informative=4, random_state=3)
X3, Y3 = make_classification(600, WIDTH, n_informative=4, n_classes=3, random_state=3)
TARGET = X[:, 0] * 2.5 + X[:, 1] ** 2

LANE = {
    "random forest": RandomForestClassifier(20, max_depth=6, random_state=0).fit(X, Y),
    "extra trees, 3 classes": ExtraTreesClassifier(15, max_depth=5, random_state=0).fit(X3, Y3),
    "decision tree": DecisionTreeClassifier(max_depth=7, random_state=0).fit(X, Y),
    "boosting, binary": HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(X, Y),
    "forest regressor": RandomForestRegressor(10, max_depth=6, random_state=0).fit(X, TARGET),
    "extra trees regressor": ExtraTreesRegressor(8, random_state=0).fit(X, TARGET),
    "tree regressor": DecisionTreeRegressor(max_depth=6, random_state=0).fit(X, TARGET),
    "boosting regressor": HistGradientBoostingRegressor(max_iter=30, random_state=0).fit(X, TARGET),
}
NO_LANE = {  # a softmax, a link or transformers of their own: the matrix path only
    "boosting, 3 classes": HistGradientBoostingClassifier(max_iter=20).fit(X3, Y3),
    "boosting, Poisson": HistGradientBoostingRegressor(loss="poisson", max_iter=20).fit(
        X, np.abs(TARGET)
    ),
    "pipeline": Pipeline(
        [("scale", StandardScaler()), ("model", RandomForestClassifier(5, random_state=0))]
    ).fit(X, Y),
}


def _checked(estimator: Any) -> fastpath.Proba:
    if hasattr(estimator, "predict_proba"):
        return fastpath.checked_fast_proba(estimator, WIDTH, None)
    return fastpath.checked_fast_predict(estimator, WIDTH, None)


def _rows() -> np.ndarray:
    """Rows around the training data, far from it, beyond float32's range (a forest rounds
    them to infinity), and already float32 (FP32 requests)."""
    rng = np.random.default_rng(11)
    near = X[:100] + rng.normal(scale=0.01, size=(100, WIDTH))
    far = rng.normal(scale=50, size=(40, WIDTH))
    tiny = rng.normal(scale=1e-30, size=(10, WIDTH))
    huge = np.array([[1e300, -1e300] * (WIDTH // 2), [3.5e38, -1e-50] * (WIDTH // 2)])
    return np.vstack([near, far, tiny, huge, X[:50].astype(np.float32).astype(np.float64)])


@pytest.fixture(autouse=True)
def _native() -> None:
    if not fastpath.NATIVE:
        pytest.skip("the lane walks in C: not built here")  # CI requires it: test_native_build


@pytest.mark.parametrize("name", list(LANE))
def test_the_row_form_gives_the_matrix_forms_bits(name: str) -> None:
    fast = _checked(LANE[name])
    row = fastpath.row_of(fast)
    assert row is not None
    for values in _rows():
        got = array("d", row(array("d", values))).tobytes()
        assert got == fast(values[None, :]).tobytes(), values


@pytest.mark.parametrize("name", list(NO_LANE))
def test_models_with_their_own_transforms_have_no_row_form(name: str) -> None:
    assert fastpath.row_of(_checked(NO_LANE[name])) is None


def _model(estimator: Any, threshold: float | None = None) -> LoadedModel:
    signature = Signature(tuple(FeatureSpec(f"f{i}") for i in range(WIDTH)))
    if hasattr(estimator, "predict_proba"):
        output = OutputSpec(OutputKind.CLASSIFIER, tuple(estimator.classes_.tolist()), threshold)
    else:
        output = OutputSpec(OutputKind.REGRESSOR)
    return LoadedModel(ModelKey("m", 1), signature, output, estimator, "0" * 64)


@pytest.mark.parametrize(
    ("name", "threshold"),
    [
        ("random forest", None),
        ("random forest", 0.3),
        ("boosting, binary", 0.9),
        ("extra trees, 3 classes", None),
        ("boosting, binary", None),
    ],
)
def test_a_rows_label_and_probabilities_are_predicts(name: str, threshold: float | None) -> None:
    model = _model(LANE[name], threshold)
    for values in _rows():
        want = model.predict(values[None, :])
        got = model.predict_row(array("d", values), labels=True)
        assert got.label == want.labels[0] and type(got.label) is type(want.labels[0])
        assert array("d", got.probabilities).tobytes() == want.probabilities.tobytes()
        scores = model.predict_row(array("d", values), labels=False)
        assert scores.label is None and scores.probabilities == got.probabilities


def test_ties_pick_the_first_class_as_argmax_does() -> None:
    model = _model(LANE["random forest"])
    model.row = lambda values: (0.25, 0.5, 0.25, 0.5)  # two maxima
    model.output = OutputSpec(OutputKind.CLASSIFIER, ("a", "b", "c", "d"), None)
    assert model.predict_row(array("d", [0.0] * WIDTH), labels=True).label == "b"


def test_a_rows_value_is_predicts() -> None:
    model = _model(LANE["boosting regressor"])
    for values in _rows():
        got = model.predict_row(array("d", values), labels=True)
        assert got.label is None and got.probabilities is None and got.values is not None
        assert array("d", got.values).tobytes() == model.predict(values[None, :]).values.tobytes()


def _usual(values: Any, shape: tuple[int, ...], datatype: str = "FP32") -> wire.UsualRequest:
    dtype = "<f4" if datatype == "FP32" else "<f8"
    data = values if isinstance(values, bytes) else np.asarray(values, dtype=dtype).tobytes()
    return wire.UsualRequest("m", "", "", "input", datatype, shape, data, True, ())


def test_one_finite_row_takes_the_lane_exactly() -> None:
    row = [0.1, -2.5, 1e30, 3.0, 0.0, -0.0]
    fp32 = wire.row_values(_usual(row, (1, 6)))
    fp64 = wire.row_values(_usual(row, (1, 6), "FP64"))
    assert fp32 is not None and fp64 is not None
    assert fp32.tobytes() == np.asarray(row, "<f4").astype("<f8").tobytes()  # widened exactly
    assert fp64.tobytes() == np.asarray(row, "<f8").tobytes()


@pytest.mark.parametrize(
    "request_",
    [
        _usual([0.1, float("nan"), 1.0], (1, 3)),
        _usual([0.1, float("inf"), 1.0], (1, 3), "FP64"),
        _usual([[1.0, 2.0], [3.0, 4.0]], (2, 2)),  # two rows: the matrix path
        _usual([1.0, 2.0], (2,)),
        _usual([1.0, 2.0, 3.0], (1, 2)),  # more values than the shape says
        _usual(b"\x00" * 7, (1, 2)),  # not a whole number of FP32 values
        _usual([1.0, 2.0], (1, 2), "FP16"),
    ],
    ids=["nan", "inf", "two rows", "1-d", "count", "bytes", "fp16"],
)
def test_anything_else_takes_the_matrix_path(request_: wire.UsualRequest) -> None:
    assert wire.row_values(request_) is None
