"""Evaluation figures (PNG) and the Markdown model card of a training run.

Figures are drawn on plain :class:`matplotlib.figure.Figure` objects (Agg canvas),
never through ``pyplot``'s global state, so reports can be made from any thread.
The card leads with PR-AUC and recall at the chosen precision: at ~2 % fraud,
accuracy says little (the majority class scores ~98 %).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from mlbackend_training.fraud_features import FEATURE_REFS
from mlbackend_training.pipeline import ClassifierMetrics, Evaluation, TrainingRun

ROC_PNG = "roc_curve.png"
PR_PNG = "pr_curve.png"
CONFUSION_PNG = "confusion_matrix.png"
MODEL_CARD = "model_card.md"


def _figure() -> Figure:
    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_roc(evaluation: Evaluation, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    for name, score, metrics in (
        ("model", evaluation.model_score, evaluation.model),
        ("rule scorer", evaluation.rule_score, evaluation.rule_scorer),
    ):
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
    for name, score, metrics in (
        ("model", evaluation.model_score, evaluation.model),
        ("rule scorer", evaluation.rule_score, evaluation.rule_scorer),
    ):
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


def plot_confusion(evaluation: Evaluation, path: Path) -> Path:
    fig = Figure(figsize=(9, 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, metrics) in enumerate(
        (("model", evaluation.model), ("rule scorer", evaluation.rule_scorer))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        cm = np.array(metrics.confusion_matrix)
        ax.imshow(np.log1p(cm), cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, f"{v:,}", ha="center", va="center", fontsize=11)
        ax.set_xticks([0, 1], ["legit", "fraud"])
        ax.set_yticks([0, 1], ["legit", "fraud"])
        ax.set(xlabel="predicted", ylabel="actual", title=name)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_figures(evaluation: Evaluation, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [
        plot_roc(evaluation, directory / ROC_PNG),
        plot_pr(evaluation, directory / PR_PNG),
        plot_confusion(evaluation, directory / CONFUSION_PNG),
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


def model_card(run: TrainingRun, run_id: str, extra: dict[str, Any] | None = None) -> str:
    """The Markdown model card of ``run``."""
    ev, cfg, lin, split = run.evaluation, run.config, run.lineage, run.split.describe()
    target = run.threshold.precision_target
    m = ev.model
    data = run.dataset
    lines = [
        f"# Model card: fraud_detection — run `{run_id}`",
        "",
        f"**PR-AUC {m.pr_auc:.4f}** (rule scorer {ev.rule_scorer.pr_auc:.4f}, majority "
        f"{ev.majority.pr_auc:.4f}) · **recall {m.recall_at_precision:.4f} at precision ≥ "
        f"{target:g}** (rule scorer {ev.rule_scorer.recall_at_precision:.4f}) on the held-out "
        f"later period ({m.rows:,} transactions, {m.positives:,} fraud).",
        "",
        f"Quality gate: **{'passed' if run.gate.passed else 'refused'}** — {run.gate.reason}",
        "",
        "## Metrics on the test period",
        "",
        "Same rows for all three scorers. Decisions: model at the threshold chosen on "
        "validation; rule scorer fraud if score > 0.5; majority always `legit`.",
        "",
        f"| scorer | PR-AUC | recall @ precision ≥ {target:g} | ROC-AUC | precision | recall | "
        "F1 | accuracy | TN / FP / FN / TP |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("model", m),
        _row("rule scorer", ev.rule_scorer),
        _row("majority class", ev.majority),
        "",
        "## Decision threshold",
        "",
        f"- threshold **{run.threshold.threshold:.6f}**: {run.threshold.rule}",
        f"- on validation: precision {run.threshold.validation_precision:.4f}, "
        f"recall {run.threshold.validation_recall:.4f}",
        f"- on test: precision {m.precision:.4f}, recall {m.recall:.4f}",
        "",
        "## Data",
        "",
        f"- synthetic card transactions (`mlbackend_training.fraud_data`), seed **{cfg.seed}**: "
        f"{len(data.users):,} users x {cfg.data.n_days} days, {len(data.transactions):,} "
        f"transactions, fraud rate {data.fraud_rate:.4f}",
        f"- data set digest (sha256): `{lin.dataset_digest}`",
        f"- split: **{split['method']}**",
    ]
    for part in ("train", "validation", "test"):
        p = split[part]
        lines.append(
            f"  - {part}: {p['rows']:,} rows, {p['fraud']:,} fraud ({p['fraud_rate']:.4f}), "
            f"{_iso(p['from_ts'])} → {_iso(p['to_ts'])} UTC"
        )
    lines += [
        "",
        "## Lineage",
        "",
        f"- training rows: {lin.training_rows:,}, {_iso(lin.training_from_ts)} → "
        f"{_iso(lin.training_to_ts)} UTC",
        f"- training data digest (sha256 of the rows trained on): `{lin.training_digest}`",
        f"- seed: {lin.seed}",
    ]
    for key, value in (extra or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "## Model",
        "",
        f"- estimator: `{cfg.estimator.name}`, params {dict(cfg.estimator.params) or 'defaults'}",
        f"- pipeline: `{' → '.join(type(step).__name__ for _, step in run.model.steps)}`",
        "",
        "## Features (signature order)",
        "",
        "All history features use only the user's events strictly before the transaction.",
        "",
        "| # | feature | source |",
        "|---|---|---|",
    ]
    for i, name in enumerate(run.features.names):
        lines.append(f"| {i} | `{name}` | `{FEATURE_REFS.get(name, '-')}` |")
    lines += [
        "",
        "## Figures",
        "",
        f"![PR curve]({PR_PNG}) ![ROC curve]({ROC_PNG}) ![confusion matrix]({CONFUSION_PNG})",
        "",
    ]
    return "\n".join(lines)
