"""Evaluation figures (PNG) and the Markdown model card of a training run.

Figures are drawn on plain :class:`matplotlib.figure.Figure` objects (Agg canvas),
never through ``pyplot``'s global state, so reports can be made from any thread.
A binary card leads with PR-AUC and recall at the chosen precision: at ~2 % fraud,
accuracy says little (the majority class scores ~98 %). A multiclass card leads with
macro-F1 and has the K x K confusion matrix as its figure; it draws no ROC or PR
curves (one-vs-rest curves would describe K binary problems the model was not
thresholded for: serving picks the most probable class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from mlbackend_training.fraud_features import FEATURE_REFS
from mlbackend_training.multiclass import MulticlassMetrics, MulticlassRun
from mlbackend_training.pipeline import (
    ClassifierMetrics,
    EstimatorSpec,
    Evaluation,
    FittedRun,
    ModelRun,
    TrainingRun,
)

ROC_PNG = "roc_curve.png"
PR_PNG = "pr_curve.png"
CONFUSION_PNG = "confusion_matrix.png"
MODEL_CARD = "model_card.md"


def _figure() -> Figure:
    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _scored(evaluation: Evaluation) -> list[tuple[str, Any, ClassifierMetrics]]:
    """The model and every baseline that ranks rows: (label, scores, metrics)."""
    return [
        ("model", evaluation.model_score, evaluation.model),
        *(
            (name.replace("_", " "), score, evaluation.baselines[name])
            for name, score in evaluation.baseline_scores.items()
        ),
    ]


def plot_roc(evaluation: Evaluation, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    for name, score, metrics in _scored(evaluation):
        fpr, tpr, _ = roc_curve(evaluation.label, score)
        ax.plot(fpr, tpr, label=f"{name} (ROC-AUC {metrics.roc_auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="majority / chance (0.500)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test period")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_pr(evaluation: Evaluation, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    for name, score, metrics in _scored(evaluation):
        precision, recall, _ = precision_recall_curve(evaluation.label, score)
        ax.step(recall, precision, where="post", label=f"{name} (PR-AUC {metrics.pr_auc:.3f})")
    prevalence = float(evaluation.label.mean())
    ax.axhline(prevalence, linestyle="--", color="grey", label=f"majority ({prevalence:.3f})")
    m = evaluation.model
    ax.axhline(m.precision_target, linestyle=":", color="black", linewidth=0.8)
    ax.plot(
        [m.recall], [m.precision], "o", color="red", label=f"chosen threshold {m.threshold:.3f}"
    )
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, test period")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_confusion_matrices(
    panels: Sequence[tuple[str, list[list[int]]]], classes: Sequence[str], path: Path
) -> Path:
    """One confusion matrix per scorer side by side (rows actual, columns predicted)."""
    k = len(classes)
    side = max(4.5, 1.2 + 0.6 * k)
    fig = Figure(figsize=(side * len(panels), side - 0.5), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, matrix) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        cm = np.array(matrix)
        ax.imshow(np.log1p(cm), cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, f"{v:,}", ha="center", va="center", fontsize=11 if k <= 4 else 8)
        ax.set_xticks(range(k), list(classes), rotation=30 if k > 3 else 0)
        ax.set_yticks(range(k), list(classes))
        ax.set(xlabel="predicted", ylabel="actual", title=name)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_confusion(
    evaluation: Evaluation, path: Path, classes: Sequence[str] = ("legit", "fraud")
) -> Path:
    panels = [(name, metrics.confusion_matrix) for name, _, metrics in _scored(evaluation)]
    if len(panels) == 1:
        panels.append(("majority class", evaluation.majority.confusion_matrix))
    return plot_confusion_matrices(panels, classes, path)


def write_figures(
    evaluation: Evaluation, directory: Path, classes: Sequence[str] = ("legit", "fraud")
) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [
        plot_roc(evaluation, directory / ROC_PNG),
        plot_pr(evaluation, directory / PR_PNG),
        plot_confusion(evaluation, directory / CONFUSION_PNG, classes),
    ]


def _iso(ts: int | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _row(name: str, m: ClassifierMetrics) -> str:
    def f(v: float) -> str:
        return "n/a" if v != v else f"{v:.4f}"

    (tn, fp), (fn, tp) = m.confusion_matrix
    return (
        f"| {name} | {f(m.pr_auc)} | {f(m.recall_at_precision)} | {f(m.roc_auc)} | "
        f"{f(m.precision)} | {f(m.recall)} | {f(m.f1)} | {f(m.accuracy)} | "
        f"{tn:,} / {fp:,} / {fn:,} / {tp:,} |"
    )


def _headline(ev: Evaluation, rows_noun: str, positive_noun: str) -> str:
    m = ev.model
    named = [(n.replace("_", " "), b) for n, b in reversed(list(ev.baselines.items()))]
    pr = ", ".join(f"{n} {b.pr_auc:.4f}" for n, b in named)
    scored = [n for n in ev.baselines if n != "majority"]
    recall = ", ".join(
        f"{n.replace('_', ' ')} {ev.baselines[n].recall_at_precision:.4f}" for n in scored
    )
    text = (
        f"**PR-AUC {m.pr_auc:.4f}** ({pr}) · **recall {m.recall_at_precision:.4f} at precision ≥ "
        f"{m.precision_target:g}**{f' ({recall})' if recall else ''}"
    )
    if m.recall_target is not None and m.precision_at_recall is not None:
        text += f" · **precision {m.precision_at_recall:.4f} at recall ≥ {m.recall_target:g}**"
    return (
        f"{text} on the held-out test rows ({m.rows:,} {rows_noun}, "
        f"{m.positives:,} {positive_noun})."
    )


def render_card(
    *,
    title: str,
    run: ModelRun,
    estimator: EstimatorSpec,
    data_lines: list[str],
    feature_rows: list[tuple[str, str]],
    feature_note: str,
    scorers_note: str,
    rows_noun: str,
    positive_noun: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """A model card: headline, metrics next to the baselines, threshold, data, split,
    lineage, model, features (name and source, in signature order) and the figures."""
    ev = run.evaluation
    m = ev.model
    target = m.precision_target
    lines = [
        f"# {title}",
        "",
        _headline(ev, rows_noun, positive_noun),
        "",
        f"Quality gate: **{'passed' if run.gate.passed else 'refused'}** — {run.gate.reason}",
        "",
        "## Metrics on the test rows",
        "",
        scorers_note,
        "",
        f"| scorer | PR-AUC | recall @ precision ≥ {target:g} | ROC-AUC | precision | recall | "
        "F1 | accuracy | TN / FP / FN / TP |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("model", m),
        *(_row(n.replace("_", " "), b) for n, b in ev.baselines.items() if n != "majority"),
        _row("majority class", ev.majority),
        "",
        "## Decision threshold",
        "",
        f"- threshold **{run.threshold.threshold:.6f}**: {run.threshold.rule}",
        f"- on validation: precision {run.threshold.validation_precision:.4f}, "
        f"recall {run.threshold.validation_recall:.4f}",
        f"- on test: precision {m.precision:.4f}, recall {m.recall:.4f}",
        "",
    ]

    def counts(p: dict[str, Any]) -> str:
        return f"{p['fraud']:,} {positive_noun} ({p['fraud_rate']:.4f})"

    lines += card_sections(
        run,
        estimator=estimator,
        data_lines=data_lines,
        class_counts=counts,
        feature_rows=feature_rows,
        feature_note=feature_note,
        extra=extra,
        figures=f"![PR curve]({PR_PNG}) ![ROC curve]({ROC_PNG}) "
        f"![confusion matrix]({CONFUSION_PNG})",
    )
    return "\n".join(lines)


def card_sections(
    run: FittedRun,
    *,
    estimator: EstimatorSpec,
    data_lines: list[str],
    class_counts: Callable[[dict[str, Any]], str],
    feature_rows: list[tuple[str, str]],
    feature_note: str,
    extra: dict[str, Any] | None,
    figures: str,
) -> list[str]:
    """The sections every card ends with: data and split (``class_counts`` describes a
    part's labels), lineage, model, features in signature order, figures. Without row
    times (the split's ``timed``), no time ranges are shown."""
    lin, split = run.lineage, run.split.describe()

    def span(start: int | None, end: int | None) -> str:
        return f", {_iso(start)} → {_iso(end)} UTC" if start is not None else ""

    lines = ["## Data", "", *data_lines, f"- split: **{split['method']}**"]
    for part in ("train", "validation", "test"):
        p = split[part]
        lines.append(
            f"  - {part}: {p['rows']:,} rows, {class_counts(p)}{span(p['from_ts'], p['to_ts'])}"
        )
    lines += [
        "",
        "## Lineage",
        "",
        f"- training rows: {lin.training_rows:,}"
        + (span(lin.training_from_ts, lin.training_to_ts) or " (no row times)"),
        f"- training data digest (sha256 of the rows trained on): `{lin.training_digest}`",
        f"- seed: {lin.seed}",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "## Model",
        "",
        f"- estimator: `{estimator.name}`, params {dict(estimator.params) or 'defaults'}",
        f"- pipeline: `{' → '.join(type(step).__name__ for _, step in run.model.steps)}`",
        "",
        "## Features (signature order)",
        "",
        feature_note,
        "",
        "| # | feature | source |",
        "|---|---|---|",
    ]
    for i, (name, source) in enumerate(feature_rows):
        lines.append(f"| {i} | `{name}` | {source} |")
    lines += ["", "## Figures", "", figures, ""]
    return lines


def write_multiclass_figures(run: MulticlassRun, directory: Path) -> list[Path]:
    """The K x K confusion matrices of the model and the majority class (no curves)."""
    directory.mkdir(parents=True, exist_ok=True)
    ev = run.evaluation
    panels = [
        ("model", ev.model.confusion_matrix),
        (f"majority class ({ev.majority_class})", ev.majority.confusion_matrix),
    ]
    return [plot_confusion_matrices(panels, ev.classes, directory / CONFUSION_PNG)]


def _multiclass_row(name: str, m: MulticlassMetrics) -> str:
    return (
        f"| {name} | {m.accuracy:.4f} | {m.macro_f1:.4f} | {m.weighted_f1:.4f} | {m.log_loss:.4f} |"
    )


def render_multiclass_card(
    *,
    title: str,
    run: MulticlassRun,
    estimator: EstimatorSpec,
    data_lines: list[str],
    feature_rows: list[tuple[str, str]],
    feature_note: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """A multiclass model card: macro-F1 first, the model next to the majority class,
    per-class scores, the confusion matrix as a table and a figure, then the sections
    every card has."""
    ev = run.evaluation
    m, base = ev.model, ev.majority
    names = list(ev.classes)
    lines = [
        f"# {title}",
        "",
        f"**macro-F1 {m.macro_f1:.4f}** (majority class {base.macro_f1:.4f}) · accuracy "
        f"{m.accuracy:.4f} ({base.accuracy:.4f}) · log loss {m.log_loss:.4f} "
        f"({base.log_loss:.4f}) on the held-out test rows ({m.rows:,} rows, "
        f"{len(names)} classes).",
        "",
        f"Quality gate: **{'passed' if run.gate.passed else 'refused'}** — {run.gate.reason}",
        "",
        "## Metrics on the test rows",
        "",
        "Same rows for both scorers. The model predicts its most probable class (no "
        "decision threshold; serving does the same). Baseline: the training rows' "
        f"majority class (`{ev.majority_class}`), with their class frequencies as its "
        "probabilities for the log loss.",
        "",
        "| scorer | accuracy | macro-F1 | weighted-F1 | log loss |",
        "|---|---|---|---|---|",
        _multiclass_row("model", m),
        _multiclass_row("majority class", base),
        "",
        "## Per class (model)",
        "",
        "| code | class | precision | recall | F1 | support |",
        "|---|---|---|---|---|---|",
        *(
            f"| {i} | `{name}` | {c.precision:.4f} | {c.recall:.4f} | {c.f1:.4f} | {c.support:,} |"
            for i, (name, c) in enumerate(m.per_class.items())
        ),
        "",
        "## Confusion matrix (model; rows actual, columns predicted)",
        "",
        "| actual \\ predicted | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
        *(
            f"| `{name}` | " + " | ".join(f"{v:,}" for v in row) + " |"
            for name, row in zip(names, m.confusion_matrix, strict=True)
        ),
        "",
    ]

    def counts(p: dict[str, Any]) -> str:
        return ", ".join(f"{n} {k:,}" for n, k in zip(names, p["class_counts"], strict=False))

    lines += card_sections(
        run,
        estimator=estimator,
        data_lines=data_lines,
        class_counts=counts,
        feature_rows=feature_rows,
        feature_note=feature_note,
        extra=extra,
        figures=f"![confusion matrix]({CONFUSION_PNG}) (no ROC or PR curves: the model is "
        "not thresholded per class)",
    )
    return "\n".join(lines)


def model_card(run: TrainingRun, run_id: str, extra: dict[str, Any] | None = None) -> str:
    """The Markdown model card of a fraud ``run``."""
    cfg, data = run.config, run.dataset
    return render_card(
        title=f"Model card: fraud_detection — run `{run_id}`",
        run=run,
        estimator=cfg.estimator,
        data_lines=[
            f"- synthetic card transactions (`mlbackend_training.fraud_data`), seed "
            f"**{cfg.seed}**: {len(data.users):,} users x {cfg.data.n_days} days, "
            f"{len(data.transactions):,} transactions, fraud rate {data.fraud_rate:.4f}",
            f"- data set digest (sha256): `{run.lineage.dataset_digest}`",
        ],
        feature_rows=[(n, f"`{FEATURE_REFS.get(n, '-')}`") for n in run.features.names],
        feature_note="All history features use only the user's events strictly before the "
        "transaction.",
        scorers_note="Same rows for all three scorers. Decisions: model at the threshold chosen "
        "on validation; rule scorer fraud if score > 0.5; majority always `legit`.",
        rows_noun="transactions",
        positive_noun="fraud",
        extra=extra,
    )
