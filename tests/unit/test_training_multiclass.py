"""Multiclass `train --config`: metrics against scikit-learn and by hand, the gate,
configuration and data errors, the example run offline, and runs without row times."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
)

from mlbackend_training.config import ConfigError, load_config, parse_config
from mlbackend_training.multiclass import (
    MulticlassGateConfig,
    evaluate_multiclass,
    multiclass_gate,
    multiclass_metrics,
)
from mlbackend_training.tabular import (
    DataError,
    TabularInputs,
    encode,
    load_data,
    run_binary,
    run_multiclass,
    vocabulary,
)

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "examples" / "plans"
CHURN = ROOT / "examples" / "churn"
RAW: dict[str, Any] = yaml.safe_load((PLANS / "plans.yaml").read_text())
CLASSES = ("cat", "dog", "owl")
# 8 rows; predicted = argmax: [0, 0, 1, 1, 1, 2, 2, 0]
LABEL = np.array([0, 0, 0, 1, 1, 2, 2, 2], dtype=np.int8)
PROBA = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.6, 0.3, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.8, 0.1],
        [0.3, 0.4, 0.3],
        [0.1, 0.2, 0.7],
        [0.2, 0.1, 0.7],
        [0.5, 0.2, 0.3],
    ]
)


def raw(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(RAW))
    out["data"] = {"path": str(PLANS / "plans.csv")}
    out.update(changes)
    return out


def test_metrics_match_scikit_learn_and_the_hand_count() -> None:
    m = multiclass_metrics(LABEL, PROBA, CLASSES)
    predicted = PROBA.argmax(axis=1)
    assert m.confusion_matrix == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]  # by hand
    assert m.accuracy == pytest.approx(6 / 8)
    assert m.accuracy == pytest.approx(accuracy_score(LABEL, predicted))
    assert m.macro_f1 == pytest.approx(f1_score(LABEL, predicted, average="macro"))
    assert m.weighted_f1 == pytest.approx(f1_score(LABEL, predicted, average="weighted"))
    assert m.log_loss == pytest.approx(log_loss(LABEL, PROBA))
    precision = precision_score(LABEL, predicted, average=None)
    recall = recall_score(LABEL, predicted, average=None)
    assert list(m.per_class) == list(CLASSES)
    for i, name in enumerate(CLASSES):
        assert m.per_class[name].precision == pytest.approx(precision[i])
        assert m.per_class[name].recall == pytest.approx(recall[i])
    # cat: 2 of 3 predicted cats are cats, 2 of 3 cats found
    assert (m.per_class["cat"].precision, m.per_class["cat"].recall) == pytest.approx(
        (2 / 3, 2 / 3)
    )
    assert m.per_class["owl"].support == 3 and m.rows == 8
    # macro-F1 by hand: F1 cat 2/3, dog 2*(2/3*1)/(5/3) = 0.8, owl 2*(1*2/3)/(5/3) = 0.8
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.8 + 0.8) / 3)


def test_a_class_never_predicted_scores_zero_not_nan() -> None:
    proba = np.tile([0.9, 0.05, 0.05], (len(LABEL), 1))
    m = multiclass_metrics(LABEL, proba, CLASSES)
    assert m.per_class["dog"].precision == 0.0 and m.per_class["dog"].f1 == 0.0
    assert not math.isnan(m.macro_f1)
    with pytest.raises(ValueError, match="probabilities of shape"):
        multiclass_metrics(LABEL, proba[:, :2], CLASSES)


class _Fixed:
    """A fitted-model stand-in: fixed probabilities, codes 0..2 as its classes."""

    classes_ = np.array([0, 1, 2])

    def predict_proba(self, values: Any) -> Any:
        return PROBA[: len(values)]


def _evaluation() -> Any:
    from mlbackend_training.fraud_features import FeatureMatrix

    def matrix(label: Any) -> FeatureMatrix:
        n = len(label)
        ids = np.asarray([str(i) for i in range(n)])
        return FeatureMatrix(("x",), np.zeros((n, 1)), label, np.zeros(n, np.int64), ids, ids)

    train = matrix(np.array([2, 2, 2, 0, 1], dtype=np.int8))  # majority: owl
    return evaluate_multiclass(_Fixed(), train, matrix(LABEL), CLASSES)


def test_the_majority_baseline_and_the_gate() -> None:
    ev = _evaluation()
    assert ev.majority_class == "owl"
    assert ev.majority.confusion_matrix == [[0, 0, 3], [0, 0, 2], [0, 0, 3]]
    assert ev.majority.log_loss == pytest.approx(log_loss(LABEL, np.tile([0.2, 0.2, 0.6], (8, 1))))
    passed = multiclass_gate(ev, MulticlassGateConfig(min_accuracy=0.7, min_macro_f1=0.7))
    assert passed.passed, passed.reason
    assert "macro-F1 0.7556 > majority's" in passed.reason
    refused = multiclass_gate(ev, MulticlassGateConfig(min_accuracy=0.8), champion=ev.model)
    assert not refused.passed
    assert refused.failures == ("accuracy 0.7500 < minimum 0.8",)
    better = multiclass_metrics(LABEL, np.eye(3)[LABEL], CLASSES)
    worse = multiclass_gate(ev, MulticlassGateConfig(champion_tolerance=0.1), champion=better)
    assert worse.failures == ("macro-F1 0.7556 worse than champion's 1.0000 (tolerance 0.1)",)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"label": {"column": "plan", "classes": ["a", "b"]}},
         r"label\.classes: List should have at least 3 items"),
        ({"label": {"column": "plan", "classes": ["a", "b", "a"]}},
         r"classes listed more than once: \['a'\]"),
        ({"label": {"column": "plan", "positive": "plus", "classes": ["basic", "plus", "premium"]}},
         r"label\.positive \(binary\) or label\.classes \(multiclass\), not both"),
        ({"threshold": {"precision": 0.5}},
         r"threshold: a multiclass label has no decision threshold"),
        ({"gate": {"min_pr_auc": 0.3}},
         r"gate\.min_pr_auc: only for a binary label; a multiclass gate takes min_accuracy"),
        ({"label": {"column": "plan", "positive": "plus"}},
         r"gate\.min_accuracy: only for a multiclass label.*gate\.min_macro_f1: only for"),
    ],
)  # fmt: skip
def test_multiclass_config_errors_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(raw(**changes))


def test_the_data_decides_when_the_config_does_not_say(tmp_path: Path) -> None:
    # No label.classes: three values make it multiclass, sorted; a threshold is refused.
    unlisted = raw(label={"column": "plan"})
    data = load_data(parse_config(unlisted))
    assert data.classes == ("basic", "plus", "premium") and data.multiclass
    with pytest.raises(DataError, match=r"\(multiclass\).*\n  threshold: a multiclass label"):
        load_data(parse_config({**unlisted, "threshold": {"recall": 0.5}}))
    # label.classes gives the codes' order; values outside it, or listed classes absent,
    # are refused.
    order = {"column": "plan", "classes": ["premium", "basic", "plus"]}
    listed = load_data(parse_config(raw(label=order)))
    assert listed.classes == ("premium", "basic", "plus")
    assert (np.array(listed.classes)[listed.label] == np.array(data.classes)[data.label]).all()
    with pytest.raises(DataError, match=r"label\.classes: 'plan' has values \['premium'\] not"):
        load_data(parse_config(raw(label={"column": "plan", "classes": ["basic", "plus", "x"]})))
    with pytest.raises(DataError, match=r"label\.classes: \['gold'\] do not occur in 'plan'"):
        load_data(
            parse_config(
                raw(label={"column": "plan", "classes": ["basic", "plus", "premium", "gold"]})
            )
        )


def _inputs(config: Any) -> TabularInputs:
    data = load_data(config)
    categories = vocabulary(data)
    return TabularInputs(config, data, encode(data, config.features.names, categories), categories)


def test_the_example_trains_offline_and_beats_the_majority_class(tmp_path: Path) -> None:
    inputs = _inputs(load_config(PLANS / "plans.yaml"))
    _, directory, run, summary = run_multiclass(inputs, tmp_path)
    ev = run.evaluation
    assert run.gate.passed, run.gate.reason
    assert ev.model.macro_f1 > 0.5 > ev.majority.macro_f1
    assert ev.majority_class == "basic"
    assert summary["problem"] == "multiclass" and "threshold" not in summary
    assert summary["evaluation"]["classes"] == ["basic", "plus", "premium"]
    assert summary["signature"]["output"]["classes"] == [0, 1, 2]
    np.testing.assert_allclose(ev.proba, run.model.predict_proba(run.split.test.values))
    assert {p.name for p in directory.iterdir()} >= {"confusion_matrix.png", "model_card.md"}
    assert not (directory / "roc_curve.png").exists()
    card = (directory / "model_card.md").read_text()
    assert "class codes 0=`basic`, 1=`plus`, 2=`premium`" in card
    assert f"| 2 | `premium` | {ev.model.per_class['premium'].precision:.4f}" in card
    # Reproducible: the same configuration and data give the same metrics.
    again = run_multiclass(inputs, tmp_path)[3]
    assert again["evaluation"] == summary["evaluation"]


def test_without_a_timestamp_column_no_time_range_is_recorded(tmp_path: Path) -> None:
    churn: dict[str, Any] = yaml.safe_load((CHURN / "churn.yaml").read_text())
    churn.update(
        data={"path": str(CHURN / "churn.csv")},
        timestamp=None,
        split={"method": "stratified", "seed": 3},
        estimator={"name": "logistic_regression"},
    )
    inputs = _inputs(parse_config(churn))
    assert inputs.data.timestamp is None and not inputs.timed
    _, directory, run, summary = run_binary(inputs, tmp_path)
    assert (run.lineage.training_from_ts, run.lineage.training_to_ts) == (None, None)
    assert (summary["data"]["from_ts"], summary["data"]["to_ts"]) == (None, None)
    assert summary["split"]["train"]["from_ts"] is None
    card = (directory / "model_card.md").read_text()
    assert "1970" not in card and "(no row times)" in card and "no timestamp column" in card
