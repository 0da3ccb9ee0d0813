"""Multiclass classification: metrics, the majority baseline, the quality gate, the run.

Labels are class codes ``0 … K-1`` (the order of the class list), so the fitted
estimator's ``classes_`` are those codes in that order and its probability columns
follow it. There is no decision threshold: the predicted class is the most probable
one, which is what serving answers for a classifier registered without a threshold.

The baseline is the majority class of the *training* rows; its probabilities are the
training rows' class frequencies (so its log loss is finite and its argmax is the
majority class). The gate checks minimums on accuracy and macro-F1, that the model's
macro-F1 beats the majority class's, and that it is not worse than the current
``production`` version's macro-F1 on the same test rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from mlbackend_training.fraud_features import FeatureMatrix
from mlbackend_training.pipeline import (
    Champion,
    EstimatorSpec,
    FittedRun,
    FloatArray,
    GateDecision,
    LabelArray,
    SplitConfig,
    StepClock,
    feature_statistics,
    lineage_of,
    same_test_rows,
    split_dataset,
)


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class MulticlassMetrics:
    """One scorer's metrics on one set of rows; the predicted class is the argmax."""

    accuracy: float
    macro_f1: float
    weighted_f1: float
    log_loss: float
    per_class: dict[str, ClassScores]  # by class name, in class order
    confusion_matrix: list[list[int]]  # rows: actual class, columns: predicted, class order
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def multiclass_metrics(
    label: LabelArray, proba: FloatArray, classes: Sequence[str]
) -> MulticlassMetrics:
    """Metrics of probabilities ``proba`` (one column per class, class order) on ``label``."""
    codes = list(range(len(classes)))
    if proba.shape != (len(label), len(codes)):
        raise ValueError(
            f"probabilities of shape {proba.shape}, expected {(len(label), len(codes))}"
        )
    predicted = proba.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        label, predicted, labels=codes, zero_division=0
    )
    return MulticlassMetrics(
        accuracy=float(accuracy_score(label, predicted)),
        macro_f1=float(f1_score(label, predicted, labels=codes, average="macro", zero_division=0)),
        weighted_f1=float(
            f1_score(label, predicted, labels=codes, average="weighted", zero_division=0)
        ),
        log_loss=float(log_loss(label, proba, labels=codes)),
        per_class={
            name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, name in enumerate(classes)
        },
        confusion_matrix=confusion_matrix(label, predicted, labels=codes).tolist(),
        rows=len(label),
    )


def class_probabilities(model: Any, matrix: FeatureMatrix, classes: int) -> FloatArray:
    """``predict_proba`` of a model trained on codes ``0 … classes-1``, checked."""
    own = [int(v) for v in np.asarray(model.classes_).tolist()]
    if own != list(range(classes)):
        raise ValueError(f"the model's classes are {own}, expected codes 0…{classes - 1}")
    return np.asarray(model.predict_proba(matrix.values), dtype=np.float64)


@dataclass(frozen=True)
class MulticlassEvaluation:
    """The model next to the majority class, on the same test rows."""

    classes: tuple[str, ...]
    model: MulticlassMetrics
    majority: MulticlassMetrics
    majority_class: str
    proba: FloatArray = field(repr=False, compare=False)
    label: LabelArray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "model": self.model.to_dict(),
            "baselines": {"majority": self.majority.to_dict()},
            "majority_class": self.majority_class,
        }


def evaluate_multiclass(
    model: Any, train: FeatureMatrix, test: FeatureMatrix, classes: Sequence[str]
) -> MulticlassEvaluation:
    """The model and the training rows' majority class (class frequencies as its
    probabilities) on ``test``."""
    prior = np.bincount(train.label, minlength=len(classes)) / len(train)
    proba = class_probabilities(model, test, len(classes))
    constant = np.tile(prior, (len(test), 1))
    return MulticlassEvaluation(
        classes=tuple(classes),
        model=multiclass_metrics(test.label, proba, classes),
        majority=multiclass_metrics(test.label, constant, classes),
        majority_class=classes[int(prior.argmax())],
        proba=proba,
        label=test.label,
    )


@dataclass(frozen=True)
class MulticlassGateConfig:
    min_accuracy: float = 0.0
    min_macro_f1: float = 0.0
    must_beat_majority: bool = True
    champion_tolerance: float = 0.0


def multiclass_gate(
    evaluation: MulticlassEvaluation,
    config: MulticlassGateConfig,
    champion: MulticlassMetrics | None = None,
) -> GateDecision:
    """Minimums on accuracy and macro-F1, macro-F1 above the majority class's, and not
    worse than ``champion``'s macro-F1 on the same rows; every failing check is named."""
    m = evaluation.model
    checks: list[str] = []
    failures: list[str] = []
    for name, value, minimum in (
        ("accuracy", m.accuracy, config.min_accuracy),
        ("macro-F1", m.macro_f1, config.min_macro_f1),
    ):
        ok = not math.isnan(value) and value >= minimum
        (checks if ok else failures).append(
            f"{name} {value:.4f} {'>=' if ok else '<'} minimum {minimum:g}"
        )
    if config.must_beat_majority:
        theirs = evaluation.majority.macro_f1
        ok = m.macro_f1 > theirs
        (checks if ok else failures).append(
            f"macro-F1 {m.macro_f1:.4f} {'>' if ok else '<='} majority's {theirs:.4f}"
        )
    if champion is not None:
        tol = config.champion_tolerance
        ok = m.macro_f1 >= champion.macro_f1 - tol
        word = "not worse than" if ok else "worse than"
        (checks if ok else failures).append(
            f"macro-F1 {m.macro_f1:.4f} {word} champion's {champion.macro_f1:.4f} "
            f"(tolerance {tol:g})"
        )
    return GateDecision(not failures, tuple(failures), tuple(checks))


@dataclass(frozen=True)
class MulticlassRun(FittedRun):
    """What split → train → evaluate → gate produced for a multiclass problem."""

    evaluation: MulticlassEvaluation

    def evaluation_summary(self) -> dict[str, Any]:
        """Split, evaluation, gate, lineage and timings as JSON-ready data."""
        return self.summary_parts({"evaluation": self.evaluation.to_dict()})


def fit_evaluate_gate_multiclass(
    features: FeatureMatrix,
    *,
    classes: Sequence[str],
    split: SplitConfig,
    estimator: EstimatorSpec,
    seed: int,
    train: Callable[[FeatureMatrix, EstimatorSpec, int], Any],
    gate: Callable[
        [MulticlassEvaluation, MulticlassGateConfig, MulticlassMetrics | None], GateDecision
    ],
    gate_config: MulticlassGateConfig,
    dataset_digest: str,
    champion: Champion[MulticlassMetrics] | None,
    clock: StepClock,
    timed: bool = True,
) -> MulticlassRun:
    """split → train → evaluate → gate on a feature matrix whose labels are class codes."""
    done = clock.done
    parts = replace(split_dataset(features, split, seed), timed=timed)
    done("split")
    model = train(parts.train, estimator, seed)
    done("train")
    evaluation = evaluate_multiclass(model, parts.train, parts.test, classes)
    done("evaluate")
    test_digest = same_test_rows(parts.test, champion)
    decision = gate(evaluation, gate_config, champion.metrics if champion else None)
    stats = feature_statistics(parts.train)
    lineage = lineage_of(parts, dataset_digest, test_digest, seed)
    done("gate")
    return MulticlassRun(
        split=parts,
        model=model,
        gate=decision,
        feature_stats=stats,
        lineage=lineage,
        timings=clock.timings,
        evaluation=evaluation,
    )


def registry_metrics(evaluation: MulticlassEvaluation) -> dict[str, float]:
    """The metrics as the registry stores them: the model's, per class (by code, since a
    class name may hold any character), and the majority baseline's."""
    out: dict[str, float] = {}
    for prefix, m in (("", evaluation.model), ("majority.", evaluation.majority)):
        out.update(
            {
                f"{prefix}accuracy": m.accuracy,
                f"{prefix}macro_f1": m.macro_f1,
                f"{prefix}weighted_f1": m.weighted_f1,
                f"{prefix}log_loss": m.log_loss,
            }
        )
    for code, scores in enumerate(evaluation.model.per_class.values()):
        for key in ("precision", "recall", "f1"):
            out[f"class_{code}.{key}"] = float(getattr(scores, key))
        out[f"class_{code}.support"] = float(scores.support)
    out["classes"] = float(len(evaluation.classes))
    out["test_rows"] = float(evaluation.model.rows)
    return out
