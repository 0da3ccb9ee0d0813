"""The training pipeline on a small data set: beats the rule scorer, reproducible, gated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mlbackend_training.fraud_data import FraudDataConfig
from mlbackend_training.pipeline import (
    Champion,
    EstimatorSpec,
    GateConfig,
    SplitConfig,
    TrainingConfig,
    TrainingRun,
    build_estimator,
    choose_threshold,
    classifier_metrics,
    quality_gate,
    run_training,
)
from mlbackend_training.run_local import (
    FEATURE_STATS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    format_summary,
    main,
    run_local,
)

# Small and fast; sprees are made more frequent so the rule scorer's only firing
# pattern (young victim, > 100 transactions in 24 h, then > 10,000) reaches the
# short test period.
SMALL_DATA = FraudDataConfig(n_users=600, n_days=40, seed=11, spree_rate=0.15)
SMALL = TrainingConfig(data=SMALL_DATA)
WEAK = EstimatorSpec(
    "hist_gradient_boosting", {"max_depth": 1, "max_iter": 1, "early_stopping": False}
)


@pytest.fixture(scope="module")
def small_run() -> TrainingRun:
    return run_training(SMALL)


def test_model_beats_the_rule_scorer_by_a_wide_margin(small_run: TrainingRun) -> None:
    ev = small_run.evaluation
    assert ev.model.pr_auc >= ev.rule_scorer.pr_auc + 0.3
    assert ev.model.recall_at_precision >= ev.rule_scorer.recall_at_precision + 0.3
    assert ev.rule_scorer.recall > 0, "the rule scorer catches some fraud in the test period"
    assert ev.model.pr_auc < 0.99, "not a toy"
    assert ev.majority.recall == 0 and ev.majority.pr_auc == pytest.approx(
        ev.model.positives / ev.model.rows
    )
    (tn, fp), (fn, tp) = ev.model.confusion_matrix
    assert tn + fp + fn + tp == ev.model.rows == len(small_run.split.test)
    assert small_run.gate.passed, small_run.gate.reason


def test_split_is_by_time_and_keeps_the_future_out(small_run: TrainingRun) -> None:
    split = small_run.split
    assert split.train.timestamp.max() < split.validation.timestamp.min()
    assert split.validation.timestamp.max() < split.test.timestamp.min()
    warmup_end = SMALL_DATA.start + 7 * 86_400
    assert split.train.timestamp.min() >= warmup_end
    assert small_run.threshold.target_met
    assert small_run.threshold.validation_precision >= SMALL.precision_target


def test_same_seed_and_config_give_the_same_metrics(small_run: TrainingRun) -> None:
    again = run_training(SMALL)
    assert again.evaluation.to_dict() == small_run.evaluation.to_dict()
    assert again.threshold == small_run.threshold
    assert again.lineage == small_run.lineage


def test_the_gate_refuses_a_weak_configuration_and_says_why(small_run: TrainingRun) -> None:
    weak = run_training(TrainingConfig(data=SMALL_DATA, estimator=WEAK))
    assert not weak.gate.passed
    assert weak.gate.reason.startswith("refused: ")
    assert "PR-AUC" in weak.gate.reason and "minimum" in weak.gate.reason
    # the same weak model, judged against the good one as champion on the same rows
    as_challenger = quality_gate(
        weak.evaluation, GateConfig(0, 0, 0, False), small_run.evaluation.model
    )
    assert not as_challenger.passed
    assert "worse than champion's" in as_challenger.reason


def test_a_champion_from_other_test_rows_is_refused(small_run: TrainingRun) -> None:
    champion = Champion(small_run.evaluation.model, test_digest="0" * 64)
    with pytest.raises(ValueError, match="other test rows"):
        run_training(SMALL, champion=champion)


def test_stratified_split_and_another_allowed_estimator() -> None:
    config = TrainingConfig(
        data=FraudDataConfig(n_users=300, n_days=20, seed=5, spree_rate=0.4),
        split=SplitConfig(method="stratified"),
        estimator=EstimatorSpec("random_forest", {"n_estimators": 20}),
    )
    run = run_training(config)
    rates = [p["fraud_rate"] for p in run.split.describe().values() if isinstance(p, dict)]
    assert max(rates) - min(rates) < 0.005
    assert [name for name, _ in run.model.steps] == ["impute", "model"]
    assert run.evaluation.model.roc_auc > 0.8


def test_only_allow_listed_estimators_and_known_params() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        build_estimator(EstimatorSpec("svc_rbf"), seed=0)
    with pytest.raises(ValueError, match="no parameter"):
        build_estimator(EstimatorSpec("random_forest", {"max_iter": 3}), seed=0)
    model = build_estimator(EstimatorSpec("hist_gradient_boosting"), seed=42).named_steps["model"]
    assert model.random_state == 42 and model.class_weight == "balanced"


def test_threshold_prefers_recall_within_the_precision_target() -> None:
    label = np.array([0, 0, 1, 0, 1, 1, 1, 0], dtype=np.int8)
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    choice = choose_threshold(label, score, 0.6)
    # >= 0.3: precision 4/6, recall 1; the loosest cut that keeps precision >= 0.6
    assert choice.threshold == pytest.approx(0.3)
    assert choice.validation_recall == 1.0 and choice.target_met
    unreachable = choose_threshold(label, score, 0.9)  # the best is 3/4 at >= 0.5
    assert not unreachable.target_met and "unreachable" in unreachable.rule
    m = classifier_metrics(label, score, 0.3, 0.6)
    assert m.confusion_matrix == [[2, 2], [0, 4]]
    assert m.precision == pytest.approx(4 / 6) and m.recall == 1.0
    assert math.isclose(m.accuracy, 6 / 8)


def test_run_local_writes_every_artifact(tmp_path: Path) -> None:
    config = TrainingConfig(data=FraudDataConfig(n_users=300, n_days=20, seed=5, spree_rate=0.4))
    result = run_local(config, tmp_path, run_id="r1")
    run_dir = tmp_path / "runs" / "r1"
    assert result.directory == run_dir
    names = {p.name for p in run_dir.iterdir()}
    assert names == {
        MODEL_FILE,
        METRICS_FILE,
        FEATURE_STATS_FILE,
        "model_card.md",
        "roc_curve.png",
        "pr_curve.png",
        "confusion_matrix.png",
    }
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    assert metrics["evaluation"]["model"]["pr_auc"] == result.run.evaluation.model.pr_auc
    assert len(metrics["artifact"]["sha256"]) == 64
    assert [i["name"] for i in metrics["signature"]["inputs"]] == list(result.run.features.names)
    stats = json.loads((run_dir / FEATURE_STATS_FILE).read_text())
    amount = stats["amount"]
    assert amount["count"] == metrics["lineage"]["training_rows"]
    assert sum(amount["histogram"]["counts"]) == amount["count"]
    assert stats["seconds_since_prev"]["null_count"] > 0
    card = (run_dir / "model_card.md").read_text()
    assert "PR-AUC" in card.split("\n")[2] and metrics["lineage"]["training_digest"] in card
    for png in ("roc_curve.png", "pr_curve.png", "confusion_matrix.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rule scorer" in format_summary(metrics)


def test_cli_prints_json_and_gates_against_a_champion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--data-dir", str(tmp_path), "--users", "300", "--days", "20", "--seed", "5"]
    assert main([*args, "--run-id", "good", "--json"]) == 0
    good = json.loads(capsys.readouterr().out)
    champion = tmp_path / "runs" / "good" / METRICS_FILE
    weak = ["--param", "max_depth=1", "--param", "max_iter=1", "--param", "early_stopping=false"]
    assert main([*args, *weak, "--run-id", "weak", "--champion-metrics", str(champion)]) == 0
    out = capsys.readouterr().out
    assert "refused" in out and "champion" in out
    assert good["gate"]["passed"] is True
    assert main([*args, "--estimator", "nope", "--run-id", "x"]) == 2
