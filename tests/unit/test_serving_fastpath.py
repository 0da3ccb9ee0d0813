"""The tree-ensemble fast path gives exactly scikit-learn's probabilities, walking in C
and with numpy alike."""

from __future__ import annotations

import os
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
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from mlbackend_serving.core import fastpath
from mlbackend_serving.core.fastpath import (
    checked_fast_predict,
    checked_fast_proba,
    fast_predict,
    fast_proba,
)
from mlbackend_serving.core.model import (
    FeatureSpec,
    LoadedModel,
    ModelKey,
    OutputKind,
    OutputSpec,
    Signature,
)

CI = os.environ.get("CI") == "true"


def _require(native: bool) -> None:
    """A test of the C walk where it was not built: a failure in CI, else skipped."""
    if native and not fastpath.NATIVE:
        pytest.fail("the C walk is not built") if CI else pytest.skip("C walk not built")


def _data(missing: bool = False, classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_classification(
        n_samples=3000, n_features=6, n_informative=4, n_classes=classes, random_state=0
    )
    if missing:
        x[np.random.default_rng(1).random(x.shape) < 0.1] = np.nan
    return x, y


@pytest.mark.parametrize("native", [True, False], ids=["c", "numpy"])
@pytest.mark.parametrize(
    ("estimator", "missing"),
    [
        (RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0), False),
        (RandomForestClassifier(n_estimators=10, random_state=0), True),
        (ExtraTreesClassifier(n_estimators=10, random_state=0), False),
        (HistGradientBoostingClassifier(max_iter=30, random_state=0), False),
        (HistGradientBoostingClassifier(max_iter=30, random_state=0), True),
        (DecisionTreeClassifier(max_depth=6, random_state=0), False),
        (DecisionTreeClassifier(random_state=0), True),
        # What `mlbackend train` makes: a Pipeline, the ensemble last.
        (Pipeline([("model", HistGradientBoostingClassifier(max_iter=30, random_state=0))]), True),
        (
            Pipeline(
                [
                    ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                    ("skip", "passthrough"),
                    ("scale", StandardScaler()),
                    ("model", RandomForestClassifier(n_estimators=10, random_state=0)),
                ]
            ),
            True,
        ),
    ],
)
def test_identical_to_predict_proba(estimator: Any, missing: bool, native: bool) -> None:
    _require(native)
    x, y = _data(missing, classes=3 if isinstance(estimator, DecisionTreeClassifier) else 2)
    estimator.fit(x, y)
    fast = fast_proba(estimator, native=native)
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


@pytest.mark.parametrize("native", [True, False], ids=["c", "numpy"])
@pytest.mark.parametrize("missing", [False, True], ids=["complete", "holes"])
def test_multiclass_boosting_sums_each_class_in_order(native: bool, missing: bool) -> None:
    _require(native)
    x, y = _data(missing, classes=3)
    estimator = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, y)
    fast = fast_proba(estimator, native=native)
    assert fast is not None
    for rows in (x[:1], x[:7], x[500:1500]):
        assert np.array_equal(fast(rows), estimator.predict_proba(rows))


@pytest.mark.parametrize("native", [True, False], ids=["c", "numpy"])
@pytest.mark.parametrize(
    ("estimator", "missing"),
    [
        (RandomForestRegressor(n_estimators=10, max_depth=8, random_state=0), False),
        (RandomForestRegressor(n_estimators=5, random_state=0), True),
        (ExtraTreesRegressor(n_estimators=5, random_state=0), False),
        (DecisionTreeRegressor(max_depth=8, random_state=0), True),
        (HistGradientBoostingRegressor(max_iter=30, random_state=0), True),
        # A link that is not the identity: the raw sum goes through exp.
        (HistGradientBoostingRegressor(loss="poisson", max_iter=30, random_state=0), True),
        (
            Pipeline(
                [
                    ("impute", SimpleImputer()),
                    ("model", RandomForestRegressor(n_estimators=5, random_state=0)),
                ]
            ),
            True,
        ),
    ],
)
def test_regressors_predict_exactly_their_own_values(
    estimator: Any, missing: bool, native: bool
) -> None:
    _require(native)
    x, _ = _data(missing)
    rng = np.random.default_rng(2)
    target = np.abs(np.nan_to_num(x[:, 0]) * 3 + rng.normal(size=len(x)))  # >= 0 for poisson
    estimator.fit(x, target)
    fast = fast_predict(estimator, native=native)
    assert fast is not None and fast_proba(estimator) is None
    predict = checked_fast_predict(estimator, x.shape[1], x[:4])
    assert predict != estimator.predict
    for rows in (x[:1], x[:32], x[1000:2000]):
        assert np.array_equal(fast(rows), estimator.predict(rows))
        assert np.array_equal(predict(rows), estimator.predict(rows))


def test_unsupported_models_use_their_own_method() -> None:
    x, y = _data(classes=3)
    categorical = HistGradientBoostingClassifier(
        max_iter=10, random_state=0, categorical_features=[0]
    ).fit(np.round(np.abs(x)), y)  # small non-negative integer codes in column 0
    linear = LogisticRegression().fit(x, y)
    piped = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())]).fit(x, y)
    for estimator in (categorical, linear, piped):
        assert fast_proba(estimator) is None
        assert checked_fast_proba(estimator, x.shape[1], None) == estimator.predict_proba
    regression = LinearRegression().fit(x, y.astype(float))
    assert fast_predict(regression) is None
    assert checked_fast_predict(regression, x.shape[1], None) == regression.predict


def test_a_fast_path_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    from mlbackend_serving.core import fastpath

    monkeypatch.setattr(fastpath, "fast_proba", lambda e: lambda rows: np.zeros((len(rows), 2)))
    assert checked_fast_proba(forest, x.shape[1], None) == forest.predict_proba


def _stump() -> dict[str, np.ndarray]:
    """One tree: node 0 splits on feature 0 at 0.5; leaves 1 (value 10) and 2 (20)."""
    return {
        "x": np.array([[0.0, 9.0], [1.0, 9.0], [np.nan, 9.0], [0.5, 9.0], [np.inf, 9.0]]),
        "roots": np.array([0], dtype=np.intp),
        "feature": np.array([0, 0, 0], dtype=np.intp),
        "threshold": np.array([0.5, 0.0, 0.0]),
        "left": np.array([1, 1, 2], dtype=np.intp),
        "right": np.array([2, 1, 2], dtype=np.intp),
        "missing_left": np.array([False, False, False]),
        "values": np.array([[0.0], [10.0], [20.0]]),
        "init": np.array([0.5]),
        "out": np.zeros((5, 1)),
    }


def _walk(a: dict[str, np.ndarray]) -> None:
    """Pack the stump's nodes and walk them, as a served model does."""
    walk = fastpath._treewalk
    assert walk is not None
    nodes = walk.pack_nodes(a["feature"], a["threshold"], a["left"], a["right"], a["missing_left"])
    walk.sum_leaves(a["x"], a["x"].shape[1], a["roots"], nodes, a["values"], a["init"], a["out"])


@pytest.mark.skipif(not fastpath.NATIVE and not CI, reason="C walk not built")
def test_the_c_walk_refuses_what_it_would_read_out_of_bounds() -> None:
    a = _stump()
    _walk(a)  # the well-formed tree: left where value <= threshold, NaN the missing way
    assert a["out"][:, 0].tolist() == [10.5, 20.5, 20.5, 10.5, 20.5]
    for name, bad in [
        ("feature", np.array([2, 0, 0], dtype=np.intp)),  # beyond the row's width
        ("feature", np.array([-1, 0, 0], dtype=np.intp)),  # a split on no feature
        ("left", np.array([3, 1, 2], dtype=np.intp)),  # no such node
        ("right", np.array([-2, 1, 2], dtype=np.intp)),
        ("roots", np.array([-1], dtype=np.intp)),
        ("roots", np.array([3], dtype=np.intp)),
        ("left", np.array([0, 1, 2], dtype=np.intp)),  # node 0 a leaf pointing at itself: fine
        ("right", np.array([0, 1, 2], dtype=np.intp)),  # x > 0.5 loops back to node 0
    ]:
        a = _stump()
        a[name] = bad
        if name == "left" and bad[0] == 0:
            _walk(a)
            assert a["out"][:, 0].tolist() == [0.5] * 5
            continue
        with pytest.raises(ValueError, match="malformed forest"):
            _walk(a)
    for name, bad in [
        ("x", np.zeros((5, 2), dtype=np.float32)),  # float32 values
        ("feature", np.array([0, 0, 0], dtype=np.int32)),
        ("out", np.zeros((5, 2))[:, :1]),  # not contiguous
    ]:
        a = _stump()
        a[name] = bad
        with pytest.raises((TypeError, ValueError, BufferError)):
            _walk(a)
    # Records not made by pack_nodes: node 0's left child (bytes 12-16) beyond the end.
    walk, a = fastpath._treewalk, _stump()
    assert walk is not None
    packed = bytearray(
        walk.pack_nodes(a["feature"], a["threshold"], a["left"], a["right"], a["missing_left"])
    )
    packed[12:16] = (7).to_bytes(4, "little")
    with pytest.raises(ValueError, match="malformed forest"):
        walk.sum_leaves(a["x"], 2, a["roots"], bytes(packed), a["values"], a["init"], a["out"])
    for name, short in [("out", np.zeros((4, 1))), ("values", np.zeros((2, 1)))]:
        a = _stump()
        a[name] = short  # a row short
        with pytest.raises(ValueError, match="sizes do not agree"):
            _walk(a)


def test_a_served_regressor_answers_its_own_predictions_through_the_fast_path() -> None:
    x, _ = _data()
    regressor = HistGradientBoostingRegressor(max_iter=20, random_state=0)
    regressor.fit(x, x[:, 0] * 2 + x[:, 1])
    signature = Signature(tuple(FeatureSpec(f"f{i}") for i in range(x.shape[1])))
    model = LoadedModel(
        ModelKey("r", 1), signature, OutputSpec(OutputKind.REGRESSOR), regressor, "0" * 64
    )
    assert model._predict_values != regressor.predict
    predictions = model.predict(x[:5])
    assert predictions.labels is None and predictions.probabilities is None
    assert predictions.values is not None
    assert np.array_equal(predictions.values, regressor.predict(x[:5]))


def test_an_install_without_the_c_walk_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fastpath, "NATIVE", False)
    fastpath._warn_numpy_walk.cache_clear()
    x, y = _data()
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    with caplog.at_level("WARNING", logger="mlbackend.serving"):
        for _ in range(2):
            predict = checked_fast_proba(forest, x.shape[1], None)
            assert predict != forest.predict_proba  # the numpy walk, still exact
            assert np.array_equal(predict(x[:9]), forest.predict_proba(x[:9]))
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "not built" in caplog.records[0].message
    fastpath._warn_numpy_walk.cache_clear()


@pytest.mark.filterwarnings("ignore:Skipping features without any observed values")
@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "median", "add_indicator": True},
        {"strategy": "mean"},
        {"strategy": "most_frequent", "add_indicator": True},
        {"strategy": "constant", "fill_value": -1.0, "add_indicator": True},
        {"strategy": "median", "keep_empty_features": True, "add_indicator": True},
    ],
)
def test_the_nan_imputer_transforms_exactly_as_scikit_learn(settings: dict[str, Any]) -> None:
    x, _ = _data(missing=True)
    x[:, 2] = np.nan  # no value at all in fit: dropped (or kept as 0 with keep_empty_features)
    x[:, 3] = np.nan_to_num(x[:, 3])  # no hole in fit: no indicator column
    imputer = SimpleImputer(**settings).fit(x)
    fast = fastpath._nan_imputer(imputer)
    assert fast is not None
    rows = x[:300].copy()
    rows[::7, 3] = np.nan  # holes where fit had none
    for batch in (rows, rows[:1], rows[7:8]):
        assert np.array_equal(fast(batch), imputer.transform(batch))
    # Another missing-value marker is scikit-learn's to handle.
    assert fastpath._nan_imputer(SimpleImputer(missing_values=-1.0).fit(np.nan_to_num(x))) is None


@pytest.mark.parametrize("native", [True, False], ids=["c", "numpy"])
@pytest.mark.parametrize("recipe", ["random_forest", "decision_tree", "hist_gradient_boosting"])
@pytest.mark.parametrize("categorical", [False, True], ids=["numeric", "with-codes"])
def test_every_tree_recipe_of_mlbackend_train_takes_the_fast_path(
    recipe: str, categorical: bool, native: bool
) -> None:
    """What `mlbackend train` builds (imputers, one-hot codes routed by a
    ColumnTransformer, then the model) predicts exactly as its own Pipeline, with every
    transformer as numpy: the transforms match scikit-learn's, NaN for NaN."""
    from mlbackend_training.pipeline import EstimatorSpec, build_estimator

    _require(native)
    rng = np.random.default_rng(3)
    n = 3000
    x = np.column_stack(
        [rng.normal(size=(n, 4)), rng.integers(0, 3, n), rng.integers(0, 4, n)]
    ).astype(float)
    x[rng.random(x.shape) < 0.03] = np.nan  # the codes' columns get NaN categories too
    y = (np.nan_to_num(x[:, 0]) + (x[:, 4] == 1) + rng.normal(size=n) > 0.5).astype(int)
    flags = [False] * 4 + [categorical] * 2
    model = build_estimator(EstimatorSpec(recipe, {}), 7, flags).fit(x, y)
    fast = fast_proba(model, native=native)
    assert fast is not None
    rows = x[:400].copy()
    rows[::9, 5] = 9.0  # a code fit never saw: all zeros, as scikit-learn ignores it
    for _, step in model.steps[:-1]:
        transformed = fastpath._transform_of(step)(rows)
        assert fastpath._transform_of(step) != step.transform
        assert np.array_equal(transformed, step.transform(rows), equal_nan=True)
    for batch in (rows, rows[:1], rows[9:10]):
        assert np.array_equal(fast(batch), model.predict_proba(batch))
    assert fastpath.is_light(fast) is native  # numpy transforms and the C walk only


@pytest.mark.parametrize("native", [True, False], ids=["c", "numpy"])
def test_only_the_c_walk_with_numpy_transforms_is_light(native: bool) -> None:
    """Light (served without queueing for a batch) means no scikit-learn method runs
    and the trees are walked in C: a scikit-learn transformer in front, the numpy
    walk, or a model without a fast path is not light."""
    _require(native)
    x, y = _data()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
    imputed = Pipeline([("impute", SimpleImputer()), ("model", forest)]).fit(x, y)
    scaled = Pipeline([("scale", StandardScaler()), ("model", forest)]).fit(x, y)
    boosted = HistGradientBoostingRegressor(max_iter=5).fit(x, y.astype(float))
    for estimator, light in ((forest, native), (imputed, native), (scaled, False)):
        fast = fast_proba(estimator, native=native)
        assert fast is not None and fastpath.is_light(fast) is light
    fast = fast_predict(boosted, native=native)
    assert fast is not None and fastpath.is_light(fast) is native
    signature = Signature(tuple(FeatureSpec(f"f{i}") for i in range(x.shape[1])))
    classifier = OutputSpec(OutputKind.CLASSIFIER)
    for estimator, light in ((forest, fastpath.NATIVE), (LogisticRegression().fit(x, y), False)):
        model = LoadedModel(ModelKey("m", 1), signature, classifier, estimator, "0" * 64)
        assert model.light is light
