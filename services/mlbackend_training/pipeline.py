"""Training steps over typed values: split, fit, threshold, evaluate, gate, save.

Every step is a plain function; :class:`Steps` bundles the defaults and
:func:`run_training` composes them, so a caller swaps one (say, a split that reads
the feature store's point-in-time retrieval) without touching the others. Nothing
here talks to a service.

Conventions:

- the decision threshold is chosen on the *validation* period for a precision
  target (highest recall with precision >= target), then applied unchanged to the
  later *test* period;
- every model is compared with two baselines on the same test rows: the majority
  class and the original rule scorer (+0.3 if amount > 10,000, +0.2 if the user is
  younger than 25, +0.1 if the user made more than 100 transactions in the 24 h
  before this one — ``txn_count_24h``, strictly earlier events — fraud if > 0.5);
- the quality gate checks configured minimums and, when given a champion's metrics
  on the same test rows, that the candidate is not worse.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import skops.io
from numpy.typing import NDArray
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mlbackend_training.fraud_data import DAY, FraudDataConfig, FraudDataset, generate
from mlbackend_training.fraud_features import FeatureMatrix, build_features

FloatArray = NDArray[np.float64]
LabelArray = NDArray[np.int8]

RULE_AMOUNT = 10_000.0
RULE_YOUNG_AGE = 25
RULE_MANY_TRANSACTIONS = 100
RULE_FEATURES = ("amount", "user_age", "txn_count_24h")


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SplitConfig:
    """``time``: train on the earliest period, validate next, test on the latest.

    ``stratified``: random rows with the fraud rate kept in each part (only for
    problems without a time order; it leaks the future into training here).
    ``warmup_days`` drops the first days from training: their history features are
    still filling up and would not look like later rows.
    """

    method: Literal["time", "stratified"] = "time"
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    warmup_days: float = 7.0

    def __post_init__(self) -> None:
        if self.method not in ("time", "stratified"):
            raise ValueError(f"split method must be 'time' or 'stratified', got {self.method!r}")
        if not (self.validation_fraction > 0 and self.test_fraction > 0):
            raise ValueError("validation and test fractions must be positive")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation + test fractions leave too little to train on")


@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator of the allow-list (:data:`ESTIMATORS`) and its parameters."""

    name: str = "hist_gradient_boosting"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateConfig:
    """Minimums a candidate must reach, and how much worse than the champion it may be."""

    min_pr_auc: float = 0.3
    min_roc_auc: float = 0.85
    min_recall_at_precision: float = 0.25
    must_beat_rule_scorer: bool = True
    champion_tolerance: float = 0.0
    min_precision_at_recall: float = 0.0
    """Checked when the threshold was chosen for a recall target."""
    must_beat_majority: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    data: FraudDataConfig = field(default_factory=FraudDataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    estimator: EstimatorSpec = field(default_factory=EstimatorSpec)
    precision_target: float = 0.5
    gate: GateConfig = field(default_factory=GateConfig)

    @property
    def seed(self) -> int:
        return self.data.seed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["estimator"]["params"] = dict(self.estimator.params)
        return out


# ---------------------------------------------------------------- estimators


@dataclass(frozen=True)
class EstimatorEntry:
    factory: Callable[..., Any]
    defaults: Mapping[str, Any]
    preprocessing: Callable[[], list[tuple[str, Any]]]


def _no_preprocessing() -> list[tuple[str, Any]]:
    return []


def _impute() -> list[tuple[str, Any]]:
    # missing history is information: keep an indicator next to the median
    return [("impute", SimpleImputer(strategy="median", add_indicator=True))]


def _impute_and_scale() -> list[tuple[str, Any]]:
    return [*_impute(), ("scale", StandardScaler())]


# The only estimators a config may name. HistGradientBoosting handles missing
# values itself; the others get an imputer.
ESTIMATORS: dict[str, EstimatorEntry] = {
    "hist_gradient_boosting": EstimatorEntry(
        HistGradientBoostingClassifier,
        {"learning_rate": 0.05, "max_iter": 300, "class_weight": "balanced"},
        _no_preprocessing,
    ),
    "random_forest": EstimatorEntry(
        RandomForestClassifier,
        {
            "n_estimators": 200,
            "min_samples_leaf": 5,
            "class_weight": "balanced_subsample",
            "n_jobs": 1,
        },
        _impute,
    ),
    "decision_tree": EstimatorEntry(
        DecisionTreeClassifier, {"class_weight": "balanced", "max_depth": 6}, _impute
    ),
    "logistic_regression": EstimatorEntry(
        LogisticRegression, {"class_weight": "balanced", "max_iter": 2000}, _impute_and_scale
    ),
}


def _columns(entry: EstimatorEntry, categorical: Sequence[bool]) -> list[tuple[str, Any]]:
    """The estimator's numeric preprocessing, plus one-hot encoding of categorical codes.

    Categorical inputs arrive as numeric codes (serving takes numbers only); a code
    not seen in training, or a missing one not seen either, encodes as all zeros.
    """
    if not any(categorical):
        return entry.preprocessing()
    numeric = [i for i, is_cat in enumerate(categorical) if not is_cat]
    codes = [i for i, is_cat in enumerate(categorical) if is_cat]
    onehot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    transformers: list[tuple[str, Any, list[int]]] = [("categorical", onehot, codes)]
    if numeric:
        steps = entry.preprocessing()
        transformers.insert(0, ("numeric", Pipeline(steps) if steps else "passthrough", numeric))
    return [("columns", ColumnTransformer(transformers))]


def build_estimator(spec: EstimatorSpec, seed: int, categorical: Sequence[bool] = ()) -> Pipeline:
    """An unfitted sklearn Pipeline for ``spec``; unknown names or params are refused.

    ``categorical`` flags the input columns that hold category codes (one-hot encoded
    in the pipeline); empty means every input is numeric.
    """
    entry = ESTIMATORS.get(spec.name)
    if entry is None:
        raise ValueError(
            f"estimator {spec.name!r} is not allowed; choose one of {sorted(ESTIMATORS)}"
        )
    model = entry.factory()
    allowed = set(model.get_params(deep=False))
    unknown = sorted(set(spec.params) - allowed)
    if unknown:
        raise ValueError(f"{spec.name} has no parameter(s) {unknown}; allowed: {sorted(allowed)}")
    params = {**entry.defaults, **spec.params}
    if "random_state" in allowed and "random_state" not in spec.params:
        params["random_state"] = seed
    model.set_params(**params)
    return Pipeline([*_columns(entry, categorical), ("model", model)])


# ---------------------------------------------------------------- split


@dataclass(frozen=True)
class DatasetSplit:
    method: str
    train: FeatureMatrix
    validation: FeatureMatrix
    test: FeatureMatrix
    timed: bool = True
    """False when the rows have no time (their timestamps are placeholders)."""

    def describe(self) -> dict[str, Any]:
        timed = self.timed

        def part(m: FeatureMatrix) -> dict[str, Any]:
            return {
                "rows": len(m),
                "fraud": int(m.label.sum()),
                "fraud_rate": float(m.label.mean()) if len(m) else 0.0,
                "class_counts": np.bincount(m.label, minlength=2).tolist(),
                "from_ts": int(m.timestamp.min()) if len(m) and timed else None,
                "to_ts": int(m.timestamp.max()) if len(m) and timed else None,
            }

        return {
            "method": self.method,
            "train": part(self.train),
            "validation": part(self.validation),
            "test": part(self.test),
        }


def split_dataset(matrix: FeatureMatrix, config: SplitConfig, seed: int) -> DatasetSplit:
    """Split by time (default) or stratified at random; each part stays in time order."""
    n = len(matrix)
    if config.method == "time":
        t0, t1 = int(matrix.timestamp.min()), int(matrix.timestamp.max()) + 1
        span = t1 - t0
        test_from = t1 - config.test_fraction * span
        val_from = test_from - config.validation_fraction * span
        train_from = t0 + config.warmup_days * DAY
        if train_from >= val_from:
            raise ValueError("warm-up days leave no training period")
        ts = matrix.timestamp
        train = np.flatnonzero((ts >= train_from) & (ts < val_from))
        val = np.flatnonzero((ts >= val_from) & (ts < test_from))
        test = np.flatnonzero(ts >= test_from)
    else:
        idx = np.arange(n)
        rest, test = train_test_split(
            idx, test_size=config.test_fraction, stratify=matrix.label, random_state=seed
        )
        val_share = config.validation_fraction / (1 - config.test_fraction)
        train, val = train_test_split(
            rest, test_size=val_share, stratify=matrix.label[rest], random_state=seed
        )
        train, val, test = np.sort(train), np.sort(val), np.sort(test)
    classes = len(np.unique(matrix.label))
    for name, rows in (("train", train), ("validation", val), ("test", test)):
        if len(np.unique(matrix.label[rows])) < max(classes, 2):
            raise ValueError(
                f"the {name} part needs rows of every class ({max(classes, 2)}); "
                "the data set is too small"
            )
    return DatasetSplit(config.method, matrix.take(train), matrix.take(val), matrix.take(test))


# ---------------------------------------------------------------- fit and score


def train_model(
    train: FeatureMatrix, spec: EstimatorSpec, seed: int, categorical: Sequence[bool] = ()
) -> Pipeline:
    """Fit the allow-listed estimator for ``spec`` on the training part."""
    pipeline = build_estimator(spec, seed, categorical)
    pipeline.fit(train.values, train.label)
    return pipeline


def fraud_probability(model: Any, matrix: FeatureMatrix) -> FloatArray:
    """Probability of the positive class for every row."""
    classes = list(model.classes_)
    proba = np.asarray(model.predict_proba(matrix.values), dtype=np.float64)
    return np.asarray(proba[:, classes.index(1)], dtype=np.float64)


def rule_score(matrix: FeatureMatrix) -> FloatArray:
    """The original spec's rule scorer; fraud when the score is > 0.5."""
    amount, age, count = (matrix.column(n) for n in RULE_FEATURES)
    score = (
        0.3 * (amount > RULE_AMOUNT)
        + 0.2 * (age < RULE_YOUNG_AGE)
        + 0.1 * (np.nan_to_num(count) > RULE_MANY_TRANSACTIONS)
    )
    return np.asarray(score, dtype=np.float64)


RULE_THRESHOLD = 0.5


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    precision_target: float
    validation_precision: float
    validation_recall: float
    target_met: bool
    rule: str
    recall_target: float | None = None


def choose_threshold(
    label: LabelArray, score: FloatArray, precision_target: float
) -> ThresholdChoice:
    """Highest recall with precision >= target on these rows; best F1 if unreachable."""
    precision, recall, thresholds = precision_recall_curve(label, score)
    # precision[i], recall[i] belong to "score >= thresholds[i]"; the last point has none
    p, r = np.asarray(precision[:-1]), np.asarray(recall[:-1])
    ok = np.flatnonzero(p >= precision_target)
    if len(ok):
        best_recall = r[ok].max()
        i = int(ok[r[ok] == best_recall].max())  # the strictest threshold with that recall
        rule = f"max recall with precision >= {precision_target:g}"
        met = True
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * p * r / (p + r))
        i = int(np.argmax(f1))
        rule = f"precision {precision_target:g} unreachable on validation: best F1"
        met = False
    return ThresholdChoice(
        float(thresholds[i]), precision_target, float(p[i]), float(r[i]), met, rule
    )


def threshold_for_recall(
    label: LabelArray, score: FloatArray, recall_target: float, precision_target: float
) -> ThresholdChoice:
    """Highest precision with recall >= target (the strictest such threshold).

    ``precision_target`` is only reported along (recall at that precision stays a metric).
    """
    precision, recall, thresholds = precision_recall_curve(label, score)
    p, r = np.asarray(precision[:-1]), np.asarray(recall[:-1])
    ok = np.flatnonzero(r >= recall_target)  # never empty: the lowest threshold has recall 1
    best_precision = p[ok].max()
    i = int(ok[p[ok] == best_precision].max())
    return ThresholdChoice(
        float(thresholds[i]),
        precision_target,
        float(p[i]),
        float(r[i]),
        True,
        f"max precision with recall >= {recall_target:g}",
        recall_target,
    )


@dataclass(frozen=True)
class ClassifierMetrics:
    """Metrics of one scorer on one set of rows (threshold decisions + ranking)."""

    pr_auc: float
    recall_at_precision: float
    precision_target: float
    roc_auc: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    threshold: float
    confusion_matrix: list[list[int]]  # [[tn, fp], [fn, tp]]
    rows: int
    positives: int
    recall_target: float | None = None
    precision_at_recall: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def recall_at_precision(label: LabelArray, score: FloatArray, precision_target: float) -> float:
    """Best recall over all thresholds whose precision reaches the target."""
    precision, recall, _ = precision_recall_curve(label, score)
    ok = precision[:-1] >= precision_target
    return float(recall[:-1][ok].max()) if ok.any() else 0.0


def precision_at_recall(label: LabelArray, score: FloatArray, recall_target: float) -> float:
    """Best precision over all thresholds whose recall reaches the target."""
    precision, recall, _ = precision_recall_curve(label, score)
    ok = recall[:-1] >= recall_target
    return float(precision[:-1][ok].max()) if ok.any() else 0.0


def classifier_metrics(
    label: LabelArray,
    score: FloatArray,
    threshold: float,
    precision_target: float,
    *,
    strict: bool = False,
    recall_target: float | None = None,
) -> ClassifierMetrics:
    """Metrics for ``score``; a row is fraud when score >= threshold (> if ``strict``)."""
    y = label.astype(bool)
    decision = score > threshold if strict else score >= threshold
    tp = int((decision & y).sum())
    fp = int((decision & ~y).sum())
    fn = int((~decision & y).sum())
    tn = int((~decision & ~y).sum())
    n = len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = 0 < tp + fn < n
    return ClassifierMetrics(
        pr_auc=float(average_precision_score(y, score)) if both else math.nan,
        recall_at_precision=recall_at_precision(label, score, precision_target) if both else 0.0,
        precision_target=precision_target,
        roc_auc=float(roc_auc_score(y, score)) if both else math.nan,
        accuracy=(tp + tn) / n if n else math.nan,
        precision=precision,
        recall=recall,
        f1=f1,
        threshold=threshold,
        confusion_matrix=[[tn, fp], [fn, tp]],
        rows=n,
        positives=tp + fn,
        recall_target=recall_target,
        precision_at_recall=(
            None
            if recall_target is None
            else precision_at_recall(label, score, recall_target)
            if both
            else 0.0
        ),
    )


@dataclass(frozen=True)
class Evaluation:
    """A model next to the baselines, all on the same test rows.

    ``baselines`` always holds ``majority``; ``baseline_scores`` the scores of the
    baselines that rank rows (the fraud rule scorer), drawn next to the model's curves.
    """

    model: ClassifierMetrics
    baselines: Mapping[str, ClassifierMetrics]
    model_score: FloatArray = field(repr=False, compare=False)
    label: LabelArray = field(repr=False, compare=False)
    baseline_scores: Mapping[str, FloatArray] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def majority(self) -> ClassifierMetrics:
        return self.baselines["majority"]

    @property
    def rule_scorer(self) -> ClassifierMetrics:
        return self.baselines["rule_scorer"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "baselines": {name: m.to_dict() for name, m in self.baselines.items()},
        }


# A scored baseline: its score per row and the score above which it says positive.
Baseline = tuple[Callable[[FeatureMatrix], FloatArray], float]
FRAUD_BASELINES: Mapping[str, Baseline] = {"rule_scorer": (rule_score, RULE_THRESHOLD)}


def evaluate(
    model: Any,
    test: FeatureMatrix,
    threshold: ThresholdChoice,
    baselines: Mapping[str, Baseline] = FRAUD_BASELINES,
) -> Evaluation:
    """The model at its threshold, the majority class and ``baselines`` on ``test``."""
    target, recall_target = threshold.precision_target, threshold.recall_target

    def metrics(score: FloatArray, at: float, strict: bool = False) -> ClassifierMetrics:
        return classifier_metrics(
            test.label, score, at, target, strict=strict, recall_target=recall_target
        )

    score = fraud_probability(model, test)
    majority_class = 0 if test.label.mean() <= 0.5 else 1
    constant = np.full(len(test), float(majority_class))
    scores = {name: scorer(test) for name, (scorer, _) in baselines.items()}
    return Evaluation(
        model=metrics(score, threshold.threshold),
        baselines={
            "majority": metrics(constant, 0.5),
            **{name: metrics(scores[name], at, True) for name, (_, at) in baselines.items()},
        },
        model_score=score,
        label=test.label,
        baseline_scores=scores,
    )


# ---------------------------------------------------------------- quality gate


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    failures: tuple[str, ...]
    checks: tuple[str, ...]

    @property
    def reason(self) -> str:
        if self.passed:
            return "passed: " + "; ".join(self.checks)
        return "refused: " + "; ".join(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason, "failures": list(self.failures)}


def quality_gate(
    evaluation: Evaluation,
    config: GateConfig,
    champion: ClassifierMetrics | None = None,
) -> GateDecision:
    """Decide whether a candidate may be promoted; every failing check is named.

    ``champion`` must be the current production model's metrics on the *same* test
    rows (see :func:`evaluate`); the candidate may not be worse than it on PR-AUC or
    on recall at the precision target by more than ``champion_tolerance``.
    """
    m = evaluation.model
    checks: list[str] = []
    failures: list[str] = []

    def check(ok: bool, text: str) -> None:
        (checks if ok else failures).append(text)

    def at_least(name: str, value: float, minimum: float) -> None:
        ok = not math.isnan(value) and value >= minimum
        check(ok, f"{name} {value:.4f} {'>=' if ok else '<'} minimum {minimum:g}")

    at_least("PR-AUC", m.pr_auc, config.min_pr_auc)
    at_least("ROC-AUC", m.roc_auc, config.min_roc_auc)
    at_least(
        f"recall at precision {m.precision_target:g}",
        m.recall_at_precision,
        config.min_recall_at_precision,
    )
    if m.recall_target is not None and m.precision_at_recall is not None:
        at_least(
            f"precision at recall {m.recall_target:g}",
            m.precision_at_recall,
            config.min_precision_at_recall,
        )
    for baseline, wanted in (
        ("rule_scorer", config.must_beat_rule_scorer),
        ("majority", config.must_beat_majority),
    ):
        if wanted and baseline in evaluation.baselines:
            theirs = evaluation.baselines[baseline].pr_auc
            ok = m.pr_auc > theirs
            who = baseline.replace("_", " ")
            check(ok, f"PR-AUC {m.pr_auc:.4f} {'>' if ok else '<='} {who}'s {theirs:.4f}")
    if champion is not None:
        tol = config.champion_tolerance
        compared = [
            ("PR-AUC", m.pr_auc, champion.pr_auc),
            ("recall at precision", m.recall_at_precision, champion.recall_at_precision),
        ]
        if m.precision_at_recall is not None and champion.precision_at_recall is not None:
            compared.append(
                ("precision at recall", m.precision_at_recall, champion.precision_at_recall)
            )
        for name, mine, theirs in compared:
            ok = mine >= theirs - tol
            word = "not worse than" if ok else "worse than"
            check(ok, f"{name} {mine:.4f} {word} champion's {theirs:.4f} (tolerance {tol:g})")
    return GateDecision(not failures, tuple(failures), tuple(checks))


# ---------------------------------------------------------------- artifacts


def save_model(model: Any, path: Path) -> str:
    """Write ``model`` with skops; return the artifact's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(model, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 10


def feature_statistics(matrix: FeatureMatrix) -> dict[str, dict[str, Any]]:
    """Baseline statistics per feature for drift (PSI) checks later.

    The histogram's edges are the baseline's deciles (unique), with open outer bins,
    so PSI bins hold about equal baseline mass; ``null_count`` counts missing values.
    """
    stats: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(matrix.names):
        col = matrix.values[:, i]
        present = col[~np.isnan(col)]
        entry: dict[str, Any] = {
            "count": len(present),
            "null_count": int(len(col) - len(present)),
        }
        if len(present):
            edges = np.unique(np.quantile(present, np.linspace(0, 1, HISTOGRAM_BINS + 1)[1:-1]))
            counts = np.bincount(
                np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1
            )
            entry.update(
                mean=float(present.mean()),
                std=float(present.std()),
                min=float(present.min()),
                max=float(present.max()),
                quantiles={
                    f"p{round(q * 100):02d}": float(np.quantile(present, q)) for q in QUANTILES
                },
                histogram={
                    "edges": [float(e) for e in edges],
                    "counts": [int(c) for c in counts],
                },
            )
        stats[name] = entry
    return stats


def matrix_digest(matrix: FeatureMatrix) -> str:
    """sha256 of rows exactly as trained on: names, values, labels, times, ids."""
    h = hashlib.sha256()
    h.update(json.dumps(list(matrix.names)).encode())
    for arr in (matrix.values, matrix.label, matrix.timestamp):
        h.update(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    h.update("\n".join(matrix.transaction_id.tolist()).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- composition


@dataclass(frozen=True)
class Steps:
    """The replaceable steps of a fraud training run."""

    generate: Callable[[FraudDataConfig], FraudDataset] = generate
    featurize: Callable[[FraudDataset], FeatureMatrix] = build_features
    split: Callable[[FeatureMatrix, SplitConfig, int], DatasetSplit] = split_dataset
    train: Callable[[FeatureMatrix, EstimatorSpec, int], Any] = train_model
    threshold: Callable[[LabelArray, FloatArray, float], ThresholdChoice] = choose_threshold
    evaluate: Callable[[Any, FeatureMatrix, ThresholdChoice], Evaluation] = evaluate
    gate: Callable[[Evaluation, GateConfig, ClassifierMetrics | None], GateDecision] = quality_gate


@dataclass(frozen=True)
class Lineage:
    dataset_digest: str
    training_digest: str
    training_rows: int
    training_from_ts: int | None  # None: the rows have no time
    training_to_ts: int | None
    test_digest: str
    seed: int


def lineage_of(parts: DatasetSplit, dataset_digest: str, test_digest: str, seed: int) -> Lineage:
    """The training rows' lineage (their time range only when the rows have times)."""
    train = parts.train
    return Lineage(
        dataset_digest=dataset_digest,
        training_digest=matrix_digest(train),
        training_rows=len(train),
        training_from_ts=int(train.timestamp.min()) if parts.timed else None,
        training_to_ts=int(train.timestamp.max()) if parts.timed else None,
        test_digest=test_digest,
        seed=seed,
    )


@dataclass(frozen=True)
class FittedRun:
    """What every run produced, whatever the problem: the split, the fitted model, the
    gate's decision, the training rows' statistics, lineage and step timings."""

    split: DatasetSplit
    model: Any
    gate: GateDecision
    feature_stats: dict[str, dict[str, Any]]
    lineage: Lineage
    timings: dict[str, float]

    def summary_parts(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        """Split, the problem's evaluation parts, gate, lineage and timings as JSON data."""
        return {
            "split": self.split.describe(),
            **evaluation,
            "gate": self.gate.to_dict(),
            "lineage": asdict(self.lineage),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


@dataclass(frozen=True)
class ModelRun(FittedRun):
    """What split → train → threshold → evaluate → gate produced for a binary problem."""

    threshold: ThresholdChoice
    evaluation: Evaluation

    def core(self) -> dict[str, Any]:
        """The fields of the generic part, to build a subclass's instance from."""
        return {f.name: getattr(self, f.name) for f in fields(ModelRun)}

    def evaluation_summary(self) -> dict[str, Any]:
        """Split, threshold, evaluation, gate, lineage and timings as JSON-ready data."""
        return self.summary_parts(
            {"threshold": asdict(self.threshold), "evaluation": self.evaluation.to_dict()}
        )


@dataclass(frozen=True)
class TrainingRun(ModelRun):
    """Everything one fraud run produced (the typed context the steps fill in)."""

    config: TrainingConfig
    dataset: FraudDataset
    features: FeatureMatrix

    def summary(self) -> dict[str, Any]:
        """The run's evaluation as plain JSON-ready data."""
        return {
            "seed": self.config.seed,
            "config": self.config.to_dict(),
            "data": {
                "transactions": len(self.dataset.transactions),
                "users": len(self.dataset.users),
                "fraud_rate": self.dataset.fraud_rate,
                "digest": self.lineage.dataset_digest,
            },
            **self.evaluation_summary(),
        }


Metrics = TypeVar("Metrics")


@dataclass(frozen=True)
class Champion(Generic[Metrics]):
    """The current production model's metrics and the digest of the rows they came from."""

    metrics: Metrics
    test_digest: str | None = None


class StepClock:
    """Times consecutive steps and reports each finished one."""

    def __init__(self, on_step: Callable[[str], None] | None = None) -> None:
        self.timings: dict[str, float] = {}
        self._on_step = on_step
        self._clock = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._clock
        self._clock = now
        if self._on_step is not None:
            self._on_step(name)


def fit_evaluate_gate(
    features: FeatureMatrix,
    *,
    split: SplitConfig,
    estimator: EstimatorSpec,
    seed: int,
    precision_target: float,
    gate: GateConfig,
    dataset_digest: str,
    steps: Steps,
    champion: Champion[ClassifierMetrics] | None,
    clock: StepClock,
    timed: bool = True,
) -> ModelRun:
    """split → train → threshold → evaluate → gate on a feature matrix.

    A champion whose ``test_digest`` differs from this run's test rows is refused:
    metrics on other rows are no comparison.
    """
    s, done = steps, clock.done
    parts = replace(s.split(features, split, seed), timed=timed)
    done("split")
    model = s.train(parts.train, estimator, seed)
    done("train")
    val_score = fraud_probability(model, parts.validation)
    threshold = s.threshold(parts.validation.label, val_score, precision_target)
    done("threshold")
    evaluation = s.evaluate(model, parts.test, threshold)
    done("evaluate")
    test_digest = same_test_rows(parts.test, champion)
    decision = s.gate(evaluation, gate, champion.metrics if champion else None)
    stats = feature_statistics(parts.train)
    lineage = lineage_of(parts, dataset_digest, test_digest, seed)
    done("gate")
    return ModelRun(
        split=parts,
        model=model,
        gate=decision,
        feature_stats=stats,
        lineage=lineage,
        timings=clock.timings,
        threshold=threshold,
        evaluation=evaluation,
    )


def same_test_rows(test: FeatureMatrix, champion: Champion[Any] | None) -> str:
    """The test rows' digest; a champion measured on other rows is refused."""
    digest = matrix_digest(test)
    if champion is not None and champion.test_digest not in (None, digest):
        raise ValueError(
            f"the champion was evaluated on other test rows ({champion.test_digest[:12]}…, "
            f"this run's are {digest[:12]}…): evaluate it on this run's test set"
        )
    return digest


def run_training(
    config: TrainingConfig,
    steps: Steps | None = None,
    champion: Champion[ClassifierMetrics] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TrainingRun:
    """generate → features → split → train → threshold → evaluate → gate."""
    s = steps or Steps()
    clock = StepClock(on_step)
    dataset = s.generate(config.data)
    clock.done("generate")
    features = s.featurize(dataset)
    clock.done("features")
    run = fit_evaluate_gate(
        features,
        split=config.split,
        estimator=config.estimator,
        seed=config.seed,
        precision_target=config.precision_target,
        gate=config.gate,
        dataset_digest=dataset.digest(),
        steps=s,
        champion=champion,
        clock=clock,
    )
    return TrainingRun(**run.core(), config=config, dataset=dataset, features=features)
