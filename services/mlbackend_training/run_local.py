"""Run the fraud training end to end without any service; artifacts under a run dir.

``python -m mlbackend_training.run_local --data-dir DIR [--json]`` generates data,
builds features, splits by time, trains, evaluates against the baselines, applies
the quality gate and writes ``DIR/runs/<run_id>/``:

- ``model.skops`` — the fitted sklearn pipeline (skops format);
- ``metrics.json`` — evaluation, baselines, threshold, gate, lineage, signature,
  the artifact's sha256 and the config;
- ``feature_stats.json`` — baseline statistics per feature (training rows);
- ``model_card.md`` and ``roc_curve.png``, ``pr_curve.png``, ``confusion_matrix.png``.

Registering and promoting come with ``mlbackend train fraud`` once the registry and
feature store exist; this runner is the part that needs neither.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlbackend_training.fraud_data import FraudDataConfig
from mlbackend_training.fraud_features import FEATURE_REFS, STORED_FEATURE_REFS
from mlbackend_training.pipeline import (
    Champion,
    ClassifierMetrics,
    EstimatorSpec,
    FittedRun,
    Steps,
    TrainingConfig,
    TrainingRun,
    run_training,
    save_model,
)
from mlbackend_training.report import MODEL_CARD, model_card, write_figures

MODEL_FILE = "model.skops"
METRICS_FILE = "metrics.json"
FEATURE_STATS_FILE = "feature_stats.json"
_STEPS = ("generate", "features", "split", "train", "threshold", "evaluate", "gate")


@dataclass(frozen=True)
class LocalRun:
    run_id: str
    directory: Path
    run: TrainingRun
    summary: dict[str, Any]


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of a configuration as canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def new_run_id(config: TrainingConfig | dict[str, Any]) -> str:
    """UTC time plus a digest of the config: sortable, and equal configs are visible."""
    data = config if isinstance(config, dict) else config.to_dict()
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{config_digest(data)[:8]}"


def make_run_dir(data_dir: Path, run_id: str) -> Path:
    directory = data_dir / "runs" / run_id
    directory.mkdir(parents=True, exist_ok=False)
    return directory


def write_artifacts(
    directory: Path,
    run: FittedRun,
    card: Callable[[str], str],
    summary: dict[str, Any],
    figures: Callable[[Path], object],
) -> dict[str, Any]:
    """model.skops, ``figures`` (drawn into the directory), the model card (given the
    artifact's sha256), feature statistics and metrics.json (``summary`` plus the
    artifact); returns the summary."""
    sha256 = save_model(run.model, directory / MODEL_FILE)
    figures(directory)
    (directory / MODEL_CARD).write_text(card(sha256), encoding="utf-8")
    _write_json(directory / FEATURE_STATS_FILE, run.feature_stats)
    out = {
        "run_id": directory.name,
        "run_dir": str(directory),
        **summary,
        "artifact": {"file": MODEL_FILE, "sha256": sha256, "format": "skops"},
    }
    _write_json(directory / METRICS_FILE, out)
    return out


def run_local(
    config: TrainingConfig,
    data_dir: Path,
    *,
    run_id: str | None = None,
    champion: Champion[ClassifierMetrics] | None = None,
    steps: Steps | None = None,
    progress: bool = False,
) -> LocalRun:
    """Train, evaluate, gate and write every artifact of one run; no services."""
    rid = run_id or new_run_id(config)
    directory = make_run_dir(data_dir, rid)
    with tqdm(
        total=len(_STEPS) + 1,
        desc="train fraud",
        unit="step",
        disable=not progress,
        file=sys.stderr,
    ) as bar:

        def on_step(name: str) -> None:
            following = _STEPS.index(name) + 1
            bar.set_postfix_str(_STEPS[following] if following < len(_STEPS) else "artifacts")
            bar.update()

        run = run_training(config, steps, champion, on_step=on_step)
        bar.set_postfix_str("artifacts")
        summary = write_artifacts(
            directory,
            run,
            lambda sha256: model_card(run, rid, {"artifact sha256": f"`{sha256}`"}),
            {
                **run.summary(),
                "signature": {
                    "inputs": [{"name": n, "dtype": "float64"} for n in run.features.names],
                    "output": {"kind": "classifier", "classes": [0, 1]},
                },
                "feature_refs": {"inputs": FEATURE_REFS, "stored": list(STORED_FEATURE_REFS)},
            },
            lambda directory: write_figures(run.evaluation, directory),
        )
        bar.update()
    return LocalRun(rid, directory, run, summary)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def format_summary(summary: dict[str, Any]) -> str:
    """A compact, human-readable evaluation (leading with PR-AUC and recall@precision)."""
    ev = summary["evaluation"]
    target = ev["model"]["precision_target"]
    rows = [("model", ev["model"])] + [
        (name.replace("_", " "), m) for name, m in reversed(ev["baselines"].items())
    ]

    def f(v: float | None) -> str:
        return "   n/a" if v is None else f"{v:6.3f}"

    head = f"{'':12} PR-AUC R@P{target:<4g} ROC-AUC   prec recall     F1  TN/FP/FN/TP"
    data = summary["data"]
    if "transactions" in data:
        about = f"{data['transactions']:,} transactions, fraud rate {data['fraud_rate']:.4f}"
    else:
        about = f"{data['rows']:,} rows of {data['file']}, "
        about += f"positive rate {data['positive_rate']:.4f}"
    lines = [
        f"run {summary['run_id']}  seed {summary['seed']}  {about}",
        f"test rows: {ev['model']['rows']:,}, {ev['model']['positives']:,} positive; "
        f"threshold {summary['threshold']['threshold']:.4f} ({summary['threshold']['rule']})",
        head,
    ]
    for name, m in rows:
        (tn, fp), (fn, tp) = m["confusion_matrix"]
        lines.append(
            f"{name:12} {f(m['pr_auc'])} {f(m['recall_at_precision'])}  {f(m['roc_auc'])} "
            f"{f(m['precision'])} {f(m['recall'])} {f(m['f1'])}  {tn}/{fp}/{fn}/{tp}"
        )
    lines.append(f"gate: {summary['gate']['reason']}")
    timings = summary["timings_s"]
    lines.append("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    lines.append(f"artifacts: {summary['run_dir']}")
    return "\n".join(lines)


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string such as class_weight=balanced
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlbackend_training.run_local",
        description="Train the fraud model locally (no services) and write its artifacts.",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--run-id")
    parser.add_argument("--seed", type=int, default=FraudDataConfig.seed)
    parser.add_argument("--users", type=int, default=FraudDataConfig.n_users)
    parser.add_argument("--days", type=int, default=FraudDataConfig.n_days)
    parser.add_argument("--estimator", default=EstimatorSpec.name)
    parser.add_argument(
        "--param", type=_param, action="append", default=[], help="estimator KEY=VALUE (JSON)"
    )
    parser.add_argument("--precision-target", type=float, default=TrainingConfig.precision_target)
    parser.add_argument("--split", choices=("time", "stratified"), default="time")
    parser.add_argument(
        "--champion-metrics",
        type=Path,
        help="metrics.json of the current champion; compared only on the same test rows",
    )
    parser.add_argument("--json", action="store_true", help="print the evaluation as JSON")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    base = TrainingConfig()
    config = replace(
        base,
        data=replace(base.data, seed=args.seed, n_users=args.users, n_days=args.days),
        split=replace(base.split, method=args.split),
        estimator=EstimatorSpec(args.estimator, dict(args.param)),
        precision_target=args.precision_target,
    )
    try:
        result = run_local(
            config,
            args.data_dir,
            run_id=args.run_id,
            champion=_load_champion(args.champion_metrics),
            progress=not args.no_progress and not args.json,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        print(format_summary(result.summary))
    return 0


def _load_champion(path: Path | None) -> Champion[ClassifierMetrics] | None:
    """A champion from its run's ``metrics.json`` (its model's metrics and test rows)."""
    if path is None:
        return None
    data = json.loads(path.read_text())
    m: dict[str, Any] = dict(data["evaluation"]["model"])
    for key in ("pr_auc", "roc_auc", "accuracy"):
        m[key] = float("nan") if m[key] is None else m[key]
    return Champion(ClassifierMetrics(**m), data["lineage"]["test_digest"])


if __name__ == "__main__":
    raise SystemExit(main())
