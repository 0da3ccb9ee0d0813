"""Train → register → promote through a running suite (flow 1 of the design).

:func:`train_and_register` composes the pipeline's steps with the services:

1. generate the transactions (seeded) and apply the feature definitions;
2. write the events' per-user state into the feature store and read the training set
   back point-in-time through the model's feature service (:mod:`fraud_store`: the
   ``featurize`` step, replacing the local :func:`build_features`);
3. evaluate the current ``production`` version on *this* run's test rows (its own
   feature service, its own threshold) so the gate compares like with like;
4. split / train / threshold / evaluate / gate and write the run's artifacts
   (:func:`mlbackend_training.run_local.run_local` with the store's features);
5. register the version with its metadata and attachments; move ``production`` when
   the gate passes, else record an audit note with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
import numpy as np
import sklearn
from google.protobuf import timestamp_pb2

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.registry.v1 import registry_pb2 as r
from mlbackend_clients.errors import RpcError
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_models.loader import load_artifact_bytes
from mlbackend_training import fraud_store
from mlbackend_training.fraud_data import FraudDataset, generate
from mlbackend_training.fraud_features import FeatureMatrix
from mlbackend_training.pipeline import (
    Champion,
    ClassifierMetrics,
    Evaluation,
    FittedRun,
    GateConfig,
    GateDecision,
    Steps,
    TrainingConfig,
    classifier_metrics,
    fraud_probability,
    matrix_digest,
    quality_gate,
    split_dataset,
)
from mlbackend_training.run_local import METRICS_FILE, MODEL_FILE, LocalRun, run_local

MODEL = "fraud_detection"
ALIAS = "production"
CHUNK_BYTES = 1 << 20
# A user without history has zero counts and sums: the gateway may fill those in.
ZERO_DEFAULTS = (
    "txn_count_1h", "txn_count_24h", "txn_count_7d",
    "amount_sum_1h", "amount_sum_24h", "amount_sum_7d", "history_count",
)  # fmt: skip
ATTACHMENT_TYPES = {".md": "text/markdown", ".png": "image/png", ".json": "application/json"}


@dataclass(frozen=True)
class FlowResult:
    local: LocalRun
    feature_service: str
    version: int
    promoted: bool
    decision: str
    champion_version: int | None
    rows_written: dict[str, int]

    @property
    def summary(self) -> dict[str, Any]:
        return self.local.summary


Metrics = TypeVar("Metrics")


@dataclass(frozen=True)
class ChampionEvaluation(Generic[Metrics]):
    version: int | None
    champion: Champion[Metrics] | None
    problem: str | None


def _log(on_progress: Callable[[str], None] | None, text: str) -> None:
    if on_progress is not None:
        on_progress(text)


async def train_and_register(
    config: TrainingConfig,
    data_dir: Path,
    registry: RegistryClient,
    features: FeatureStoreClient,
    *,
    model: str = MODEL,
    promote: bool = True,
    progress: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> FlowResult:
    """Run the whole flow once; see the module docstring."""
    dataset = await asyncio.to_thread(generate, config.data)
    _log(on_progress, f"generated {len(dataset.transactions):,} transactions "
                      f"(fraud rate {dataset.fraud_rate:.4f}, seed {config.seed})")  # fmt: skip
    service = await fraud_store.apply_definitions(features)
    written = await fraud_store.write_dataset(features, dataset, f"fraud-{dataset.digest()[:16]}")
    _log(on_progress, f"feature store: wrote {written} rows; feature service {service}")
    matrix = await fraud_store.historical_matrix(features, service, dataset)
    _log(on_progress, f"feature store: point-in-time training set of {len(matrix):,} rows")

    test = split_dataset(matrix, config.split, config.seed).test
    champ = await _evaluate_champion(registry, features, model, dataset, test, config)
    if champ.version is not None:
        _log(on_progress, f"champion {model}@{champ.version} evaluated on the same test rows"
             + (f": {champ.problem}" if champ.problem else ""))  # fmt: skip

    steps = Steps(
        generate=lambda _config: dataset,
        featurize=lambda _dataset: matrix,
        gate=gate_with(champ.problem),
    )
    local = await asyncio.to_thread(
        run_local, config, data_dir, champion=champ.champion, steps=steps, progress=progress
    )
    version = await _register(registry, model, local, service, matrix)
    promoted, decision = await publish(
        registry, model, version.version, local.directory, local.run.gate, promote
    )
    registry_info = {
        "model": model,
        "version": version.version,
        "feature_service": service,
        "promoted": promoted,
        "decision": decision,
        "champion_version": champ.version,
        "feature_rows_written": written,
    }
    record_registration(local.directory, local.summary, registry_info)
    return FlowResult(local, service, version.version, promoted, decision, champ.version, written)


async def publish(
    registry: RegistryClient,
    model: str,
    version: int,
    directory: Path,
    gate: GateDecision,
    promote: bool,
) -> tuple[bool, str]:
    """Attach the run's card and figures; move ``production`` when the gate passed, else
    record an audit note with the reason. Returns (promoted, the decision's text)."""
    name = f"models/{model}/versions/{version}"
    for path in await asyncio.to_thread(lambda: sorted(directory.iterdir())):
        if path.suffix in (".md", ".png"):
            await upload_attachment(registry, name, path)
    if gate.passed and promote:
        await registry.stub.SetAlias(
            r.SetAliasRequest(
                parent=f"models/{model}",
                alias=ALIAS,
                version=version,
                reason=f"quality gate {gate.reason}",
            ),
            timeout=30,
        )
        return True, f"promoted {model}@{version} to {ALIAS}: gate {gate.reason}"
    why = gate.reason if not gate.passed else "gate passed, --no-promote given"
    decision = f"{model}@{version} registered, not promoted: {why}"
    await registry.stub.CreateAuditNote(
        r.CreateAuditNoteRequest(resource=name, reason=decision), timeout=30
    )
    return False, decision


def record_registration(directory: Path, summary: dict[str, Any], info: dict[str, Any]) -> None:
    """Add what the registry did to the run's summary and its metrics.json."""
    summary["registry"] = info
    (directory / METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def gate_with(
    problem: str | None,
) -> Callable[[Evaluation, GateConfig, ClassifierMetrics | None], GateDecision]:
    """The standard gate, failing too when the champion could not be evaluated."""

    def gate(
        evaluation: Evaluation, config: GateConfig, champion: ClassifierMetrics | None
    ) -> GateDecision:
        return refuse_if(problem, quality_gate(evaluation, config, champion))

    return gate


def refuse_if(problem: str | None, decision: GateDecision) -> GateDecision:
    """``decision``, failed as well with ``problem`` (a champion that could not be
    evaluated on this run's test rows) when there is one."""
    if problem is None:
        return decision
    return GateDecision(False, (*decision.failures, problem), decision.checks)


def binary_measure(
    precision_target: float, recall_target: float | None = None
) -> Callable[[Any, FeatureMatrix, FeatureMatrix, r.ModelVersion], ClassifierMetrics]:
    """A binary champion's metrics on the test rows, at its own decision threshold."""

    def measure(
        estimator: Any, inputs: FeatureMatrix, test: FeatureMatrix, champion: r.ModelVersion
    ) -> ClassifierMetrics:
        if len(champion.output.classes) != 2:
            raise ValueError(f"it predicts {len(champion.output.classes)} classes, not 2")
        score = fraud_probability(estimator, inputs)
        threshold = (
            champion.output.decision_threshold if champion.output.HasField("decision_threshold")
            else 0.5
        )  # fmt: skip
        return classifier_metrics(
            test.label, score, threshold, precision_target, recall_target=recall_target
        )

    return measure


async def evaluate_champion(
    registry: RegistryClient,
    model: str,
    test: FeatureMatrix,
    inputs: Callable[[r.ModelVersion], Awaitable[FeatureMatrix]],
    measure: Callable[[Any, FeatureMatrix, FeatureMatrix, r.ModelVersion], Metrics],
) -> ChampionEvaluation[Metrics]:
    """The ``production`` version's metrics on ``test``'s rows (:func:`binary_measure`:
    at its own threshold).

    ``inputs`` gives the champion's inputs for those rows, in its signature's order (read
    through its own feature service, or encoded with its own category codes); ``measure``
    scores the loaded estimator on them (a ``ValueError`` when it does not fit this run).
    """
    name = f"models/{model}/versions/{ALIAS}"
    try:
        response = await registry.stub.GetModelVersion(
            r.GetModelVersionRequest(name=name), timeout=30
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # no champion yet
            return ChampionEvaluation(None, None, None)
        raise
    champion = response.model_version
    try:
        _, data = await registry.download_artifact_bytes(champion.name, timeout=120)
        estimator = await asyncio.to_thread(
            load_artifact_bytes, data, expected_sha256=champion.artifact.sha256, name=champion.name
        )
        matrix = await inputs(champion)
        expected = [s.name for s in champion.signature.features]
        if list(matrix.names) != expected:
            raise ValueError(f"its inputs are {list(matrix.names)}, its signature needs {expected}")
        metrics = measure(estimator, matrix, test, champion)
    except (RpcError, grpc.aio.AioRpcError, ValueError, KeyError) as exc:
        problem = (
            f"champion {model}@{champion.version} could not be evaluated on this test set: {exc}"
        )
        return ChampionEvaluation(champion.version, None, problem)
    return ChampionEvaluation(champion.version, Champion(metrics, matrix_digest(test)), None)


async def _evaluate_champion(
    registry: RegistryClient,
    features: FeatureStoreClient,
    model: str,
    dataset: FraudDataset,
    test: FeatureMatrix,
    config: TrainingConfig,
) -> ChampionEvaluation[ClassifierMetrics]:
    """The fraud champion, read through its own feature service."""
    index = {tid: i for i, tid in enumerate(dataset.transactions.transaction_id.tolist())}

    async def inputs(champion: r.ModelVersion) -> FeatureMatrix:
        rows = [index[tid] for tid in test.transaction_id.tolist()]
        return await fraud_store.historical_matrix(
            features, champion.feature_service, dataset, rows
        )

    return await evaluate_champion(
        registry, model, test, inputs, binary_measure(config.precision_target)
    )


# ---------------------------------------------------------------- registration


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromSeconds(int(seconds))
    return out


def binary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A binary run's metrics as the registry stores them (baselines prefixed)."""
    ev = summary["evaluation"]
    out: dict[str, float] = {}
    scorers = [("", ev["model"])] + [
        (f"{name}.", m) for name, m in reversed(ev["baselines"].items())
    ]
    for prefix, m in scorers:
        for key in ("pr_auc", "recall_at_precision", "precision_at_recall", "roc_auc",
                    "accuracy", "precision", "recall", "f1"):  # fmt: skip
            if m.get(key) is not None:
                out[prefix + key] = float(m[key])
        (tn, fp), (fn, tp) = m["confusion_matrix"]
        out.update({prefix + "tn": tn, prefix + "fp": fp, prefix + "fn": fn, prefix + "tp": tp})
    out["threshold"] = float(summary["threshold"]["threshold"])
    out["precision_target"] = float(ev["model"]["precision_target"])
    if ev["model"].get("recall_target") is not None:
        out["recall_target"] = float(ev["model"]["recall_target"])
    out["test_rows"] = float(ev["model"]["rows"])
    return out


def _params(config: TrainingConfig) -> dict[str, str]:
    return {
        "estimator": config.estimator.name,
        "estimator_params": json.dumps(dict(config.estimator.params), sort_keys=True),
        "seed": str(config.seed),
        "precision_target": str(config.precision_target),
        "split": json.dumps(config.to_dict()["split"], sort_keys=True),
        "data": json.dumps(
            {"n_users": config.data.n_users, "n_days": config.data.n_days}, sort_keys=True
        ),
        "gate": json.dumps(config.to_dict()["gate"], sort_keys=True),
    }


def baseline_statistics(
    stats: dict[str, dict[str, Any]], start: int | None, end: int | None
) -> c.DatasetStatistics:
    """The training rows' per-input statistics as the registry stores them (their time
    range only when the rows have times)."""
    out = c.DatasetStatistics()
    if start is not None and end is not None:
        out.start_time.CopyFrom(_ts(start))
        out.end_time.CopyFrom(_ts(end))
    for name, s in stats.items():
        entry = c.FeatureStatistics(
            name=name, count=int(s["count"]), null_count=int(s["null_count"])
        )
        out.row_count = max(out.row_count, int(s["count"]) + int(s["null_count"]))
        if s["count"]:
            entry.mean, entry.std, entry.min, entry.max = s["mean"], s["std"], s["min"], s["max"]
            entry.quantiles.extend(
                c.Quantile(quantile=int(k[1:]) / 100, value=v) for k, v in s["quantiles"].items()
            )
            entry.histogram.bin_edges.extend(s["histogram"]["edges"])
            entry.histogram.counts.extend(s["histogram"]["counts"])
        out.features.append(entry)
    return out


def input_example(matrix: FeatureMatrix, rows: int = 4) -> list[c.FeatureMap]:
    complete = np.flatnonzero(~np.isnan(matrix.values).any(axis=1))[:rows]
    return [
        c.FeatureMap(
            values={
                n: c.Value(double_value=float(v))
                for n, v in zip(matrix.names, matrix.values[i], strict=True)
            }
        )
        for i in complete
    ]


async def register_version(
    registry: RegistryClient,
    model: str,
    directory: Path,
    summary: dict[str, Any],
    run: FittedRun,
    *,
    output: c.OutputSpec,
    metrics: dict[str, float],
    signature: list[c.FeatureSpec],
    feature_service: str,
    feature_refs: list[str],
    params: dict[str, str],
    tags: dict[str, str],
    description: str,
    source: str,
    input_example: list[c.FeatureMap],
) -> r.ModelVersion:
    """Upload the run's artifact as a new version of ``model`` with its metadata: metrics,
    params, signature, output spec, feature service, baseline statistics of the training
    rows and lineage linking back to the run directory (with the rows' time range when
    they have times)."""
    lineage = run.lineage
    run_uri = await asyncio.to_thread(lambda: directory.resolve().as_uri())
    version = r.ModelVersion(
        artifact=r.Artifact(format=c.ARTIFACT_FORMAT_SKOPS),
        framework=r.Framework(name="scikit-learn", version=sklearn.__version__),
        signature=c.InputSignature(features=signature),
        output=output,
        feature_refs=feature_refs,
        feature_service=feature_service,
        metrics=metrics,
        params=params,
        tags={
            "training.run_id": directory.name,
            "training.gate": "passed" if run.gate.passed else "refused",
            "training.dataset_sha256": lineage.dataset_digest,
            "training.test_sha256": lineage.test_digest,
            **tags,
        },
        description=description,
        lineage=r.Lineage(
            source=source,
            row_count=lineage.training_rows,
            data_sha256=lineage.training_digest,
            run_id=directory.name,
            run_uri=run_uri,
        ),
        baseline_statistics=baseline_statistics(
            run.feature_stats, lineage.training_from_ts, lineage.training_to_ts
        ),
        input_example=input_example,
    )
    if lineage.training_from_ts is not None and lineage.training_to_ts is not None:
        version.lineage.data_start_time.CopyFrom(_ts(lineage.training_from_ts))
        version.lineage.data_end_time.CopyFrom(_ts(lineage.training_to_ts))
    return await registry.upload_version(
        f"models/{model}",
        directory / MODEL_FILE,
        version,
        create_registered_model=True,
        reason=f"training run {directory.name}",
        timeout=120,
    )


async def _register(
    registry: RegistryClient,
    model: str,
    local: LocalRun,
    service: str,
    matrix: FeatureMatrix,
) -> r.ModelVersion:
    run = local.run
    train = run.split.train
    nullable = {n for n in train.names if np.isnan(matrix.column(n)).any()} - set(ZERO_DEFAULTS)
    return await register_version(
        registry,
        model,
        local.directory,
        local.summary,
        run,
        output=classifier_output(2, run.threshold.threshold),
        metrics=binary_metrics(local.summary),
        signature=[
            c.FeatureSpec(name=n, dtype=c.DATA_TYPE_DOUBLE, nullable=n in nullable)
            for n in train.names
        ],
        feature_service=service,
        feature_refs=list(fraud_store.feature_service().feature_refs),
        params=_params(run.config),
        tags={
            "case_study": "fraud",
            **{f"gateway.default.{n}": "0" for n in ZERO_DEFAULTS},
        },
        description=(
            f"{run.config.estimator.name} on {len(train):,} point-in-time rows of {service}; "
            f"threshold {run.threshold.threshold:.4f} ({run.threshold.rule})"
        ),
        source=f"feature store {service}, point-in-time at each transaction "
        f"(synthetic fraud data, seed {run.config.seed}, sha256 {run.lineage.dataset_digest})",
        input_example=input_example(run.split.validation),
    )


def classifier_output(classes: int, threshold: float | None = None) -> c.OutputSpec:
    """Classes ``0 … classes-1`` (the estimator's order: labels are trained as those
    codes); a binary classifier's decision threshold applies to P(1)."""
    out = c.OutputSpec(
        kind=c.OUTPUT_KIND_CLASSIFIER, classes=[c.Value(int64_value=i) for i in range(classes)]
    )
    if threshold is not None:
        out.decision_threshold = threshold
    return out


async def upload_attachment(registry: RegistryClient, parent: str, path: Path) -> r.Attachment:
    """Upload one file of the run as a named attachment of version ``parent``."""
    data = await asyncio.to_thread(path.read_bytes)
    metadata = r.UploadAttachmentRequest.Metadata(
        parent=parent,
        attachment_id=path.name,
        content_type=ATTACHMENT_TYPES.get(path.suffix, "application/octet-stream"),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        description=f"training run artifact {path.name}",
    )

    async def requests() -> AsyncIterator[r.UploadAttachmentRequest]:
        yield r.UploadAttachmentRequest(metadata=metadata)
        for start in range(0, len(data), CHUNK_BYTES):
            yield r.UploadAttachmentRequest(chunk=data[start : start + CHUNK_BYTES])

    response = await registry.stub.UploadAttachment(requests(), timeout=60)
    return response.attachment
