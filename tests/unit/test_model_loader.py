"""Secure loading of model artifacts: trusted types, validated trees, sha256, pickle."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mlbackend_models.loader import (
    ArtifactRejected,
    LoadPolicy,
    load_artifact,
    sha256_hex,
)
from mlbackend_models.trees import TREE, TREE_PREDICTOR, TREE_TYPES, TreeDefect, validate_trees
from mlbackend_runtime.errors import FailedPrecondition, InvalidInput
from mlbackend_training.pipeline import ESTIMATORS, EstimatorSpec, build_estimator, save_model

X, Y = make_classification(n_samples=300, n_features=10, random_state=0)

MODELS: dict[str, Callable[[], Any]] = {
    "random_forest": lambda: make_pipeline(
        StandardScaler(), RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
    ),
    "gradient_boosting": lambda: make_pipeline(
        StandardScaler(), GradientBoostingClassifier(n_estimators=10, random_state=0)
    ),
    "hist_gradient_boosting": lambda: make_pipeline(
        StandardScaler(), HistGradientBoostingClassifier(max_iter=10, random_state=0)
    ),
    "decision_tree": lambda: make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=5)),
    "calibrated_hgb": lambda: CalibratedClassifierCV(
        HistGradientBoostingClassifier(max_iter=5), cv=2
    ),
}


def _save(model: Any, path: Path) -> str:
    data = sio.dumps(model)
    path.write_bytes(data)
    return sha256_hex(data)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_tree_models_load_validated_and_predict(kind: str, tmp_path: Path) -> None:
    model = MODELS[kind]().fit(X, Y)
    path = tmp_path / "model.skops"
    digest = _save(model, path)
    loaded = load_artifact(path, expected_sha256=digest)
    assert validate_trees(loaded) >= 1
    np.testing.assert_array_equal(loaded.predict_proba(X[:20]), model.predict_proba(X[:20]))


def _rf_with_tree_state(mutate: Callable[[dict[str, Any]], None]) -> Any:
    model = RandomForestClassifier(n_estimators=3, max_depth=4, random_state=0).fit(X, Y)
    tree = model.estimators_[1].tree_
    state = tree.__getstate__()
    state = {**state, "nodes": state["nodes"].copy(), "values": state["values"].copy()}
    mutate(state)
    tree.__setstate__(state)
    return model


def _internal(state: dict[str, Any]) -> int:
    return int(np.flatnonzero(state["nodes"]["left_child"] != -1)[0])


def _child_out_of_range(state: dict[str, Any]) -> None:
    state["nodes"]["left_child"][_internal(state)] = 10_000


def _child_cycle(state: dict[str, Any]) -> None:
    node = _internal(state) + 1 if state["nodes"]["left_child"][1] == -1 else 1
    state["nodes"]["left_child"][node] = 0  # back to the root: predict would loop forever
    state["nodes"]["right_child"][node] = 0


def _nan_threshold(state: dict[str, Any]) -> None:
    state["nodes"]["threshold"][_internal(state)] = np.nan


def _feature_too_large(state: dict[str, Any]) -> None:
    state["nodes"]["feature"][_internal(state)] = 10


def _nan_value(state: dict[str, Any]) -> None:
    state["values"][3, 0, 0] = np.nan


def _half_leaf(state: dict[str, Any]) -> None:
    state["nodes"]["right_child"][_internal(state)] = -1


@pytest.mark.parametrize(
    ("mutate", "defect"),
    [
        (_child_out_of_range, "child index 10000 out of range"),
        (_child_cycle, "child index 0 out of range"),
        (_nan_threshold, "threshold nan"),
        (_feature_too_large, "feature index 10 out of range (n_features 10)"),
        (_nan_value, "value is not finite"),
        (_half_leaf, "one child is a leaf marker"),
    ],
)
def test_corrupted_tree_is_refused_naming_type_and_defect(
    mutate: Callable[[dict[str, Any]], None], defect: str, tmp_path: Path
) -> None:
    path = tmp_path / "model.skops"
    digest = _save(_rf_with_tree_state(mutate), path)
    with pytest.raises(TreeDefect) as raised:
        load_artifact(path, expected_sha256=digest)
    assert TREE in raised.value.message
    assert defect in raised.value.message
    assert "estimators_[1].tree_" in raised.value.message
    assert raised.value.violations[0].field == "artifact"


def test_tree_wider_than_its_ensemble_is_refused(tmp_path: Path) -> None:
    # The forest validates X against n_features_in_ and passes it to its trees unchecked.
    model = RandomForestClassifier(n_estimators=2, max_depth=3, random_state=0).fit(X, Y)
    model.n_features_in_ = 5
    path = tmp_path / "model.skops"
    digest = _save(model, path)
    with pytest.raises(TreeDefect, match="out of range \\(n_features 5\\)"):
        load_artifact(path, expected_sha256=digest)


def test_understated_max_depth_edited_in_the_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    model = DecisionTreeClassifier(max_depth=3).fit(X, Y)
    digest = _save(model, path)
    # Edit the skops zip's schema: decision_path() sizes its buffer by max_depth.
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    schema = json.loads(files["schema.json"])
    tree_state = schema["content"]["content"]["tree_"]["content"]["content"]
    assert tree_state["max_depth"]["content"] == "3"
    # skops memoizes equal ints by __id__: give the forged one its own.
    tree_state["max_depth"].update(content="1", __id__=1)
    files["schema.json"] = json.dumps(schema).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(TreeDefect, match="max_depth 1 is below the actual depth 3"):
        load_artifact(path, expected_sha256=sha256_hex(buffer.getvalue()))
    assert digest != sha256_hex(buffer.getvalue())


def test_corrupted_hist_gradient_boosting_predictor_is_refused(tmp_path: Path) -> None:
    model = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(X, Y)
    nodes = model._predictors[1][0].nodes
    internal = int(np.flatnonzero(nodes["is_leaf"] == 0)[0])
    nodes["feature_idx"][internal] = 42
    path = tmp_path / "model.skops"
    digest = _save(model, path)
    with pytest.raises(TreeDefect) as raised:
        load_artifact(path, expected_sha256=digest)
    assert TREE_PREDICTOR in raised.value.message
    assert "feature index 42 out of range (n_features 10)" in raised.value.message

    nodes["feature_idx"][internal] = 0
    nodes["right"][internal] = 9999
    digest = _save(model, path)
    with pytest.raises(TreeDefect, match="right child index 9999 out of range"):
        load_artifact(path, expected_sha256=digest)


def test_unknown_untrusted_type_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    digest = _save({"model": Fraction(1, 3)}, path)
    with pytest.raises(ArtifactRejected, match=r"untrusted types fractions\.Fraction"):
        load_artifact(path, expected_sha256=digest)
    policy = LoadPolicy(trusted_types=frozenset({"fractions.Fraction"}))
    assert load_artifact(path, expected_sha256=digest, policy=policy) == {"model": Fraction(1, 3)}


def test_pickle_is_refused_by_default_and_loads_when_allowed(tmp_path: Path) -> None:
    model = DecisionTreeClassifier(max_depth=2).fit(X, Y)
    path = tmp_path / "model.pkl"
    data = pickle.dumps(model)
    path.write_bytes(data)
    with pytest.raises(FailedPrecondition, match="pickle"):
        load_artifact(path, expected_sha256=sha256_hex(data))
    loaded = load_artifact(
        path, expected_sha256=sha256_hex(data), policy=LoadPolicy(allow_pickle=True)
    )
    np.testing.assert_array_equal(loaded.predict(X[:5]), model.predict(X[:5]))


def test_sha256_mismatch_is_refused_before_loading(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    _save(DecisionTreeClassifier(max_depth=2).fit(X, Y), path)
    with pytest.raises(InvalidInput, match="does not match the expected") as raised:
        load_artifact(path, expected_sha256="0" * 64)
    assert raised.value.violations[0].field == "sha256"


def test_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(b"not a zip")
    with pytest.raises(ArtifactRejected, match="not a skops file"):
        load_artifact(path, expected_sha256=sha256_hex(b"not a zip"))


# ---------------------------------------------------------------- training allow-list
# Every estimator `mlbackend train` may build, with numeric inputs only and with
# categorical codes (ColumnTransformer + OneHotEncoder), as save_model writes it.

_XC = np.column_stack([X[:, :4], np.random.default_rng(0).integers(0, 3, len(X))])
_XC[::17, 1] = np.nan  # missing values: the imputer's indicator is part of the pipeline


@pytest.mark.parametrize("categorical", [False, True], ids=["numeric", "one_hot"])
@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_training_pipelines_round_trip_through_the_secure_loader(
    name: str, categorical: bool, tmp_path: Path
) -> None:
    params = {"n_estimators": 10} if name == "random_forest" else {}
    if name == "hist_gradient_boosting":
        params = {"max_iter": 10}
    mask = [False] * 4 + [categorical]
    model = build_estimator(EstimatorSpec(name, params), 0, mask if categorical else ())
    model.fit(_XC, Y)
    path = tmp_path / "model.skops"
    digest = save_model(model, path)
    reported = set(sio.get_untrusted_types(file=path))
    # Only the reviewed numpy.dtype (imputer, encoder) and the validated tree types.
    assert reported <= {"numpy.dtype", *TREE_TYPES}
    loaded = load_artifact(path, expected_sha256=digest)
    np.testing.assert_array_equal(loaded.predict_proba(_XC), model.predict_proba(_XC))


def test_an_imputer_pipeline_with_a_dangerous_function_is_still_refused(tmp_path: Path) -> None:
    model = make_pipeline(SimpleImputer(), FunctionTransformer(os.system)).fit(_XC)
    path = tmp_path / "model.skops"
    digest = save_model(model, path)
    with pytest.raises(ArtifactRejected, match=r"untrusted types .*system") as raised:
        load_artifact(path, expected_sha256=digest)
    assert "numpy.dtype" not in str(raised.value)  # reviewed, not the reason


def test_numpy_dtype_under_another_loader_does_not_construct(tmp_path: Path) -> None:
    """A file that claims numpy.dtype but asks skops' generic object loader for it."""
    model = SimpleImputer().fit(_XC)
    data = sio.dumps(model)
    source = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(source.read("schema.json"))
    fit_dtype = schema["content"]["content"]["_fit_dtype"]
    assert fit_dtype["__loader__"] == "DTypeNode"
    schema["content"]["content"]["_fit_dtype"] = {
        "__class__": "dtype", "__module__": "numpy", "__loader__": "ObjectNode",
        "content": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                    "content": {}, "key_types": {"__class__": "list", "__module__": "builtins",
                                                 "__loader__": "ListNode", "content": []}},
    }  # fmt: skip
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.namelist():
            body = json.dumps(schema) if item == "schema.json" else source.read(item)
            target.writestr(item, body)
    path = tmp_path / "model.skops"
    path.write_bytes(out.getvalue())
    with pytest.raises(ArtifactRejected):
        load_artifact(path, expected_sha256=sha256_hex(out.getvalue()))
