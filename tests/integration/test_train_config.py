"""`mlbackend train --config`'s flow through a real registry (and serving) in-process.

The example churn data set (examples/churn) as CSV and as Parquet: the version is
registered with signature, threshold, lineage and attachments and promoted; serving
following the registry answers with the trained pipeline's probabilities; a weak
configuration is registered but not promoted, with the reason in the audit log; the
same seed and configuration give the same metrics.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.csv
import pyarrow.parquet
import pytest
import yaml

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.registry.v1 import registry_pb2 as r
from mlbackend.serving.v1 import serving_pb2
from mlbackend_clients.registry import RegistryClient
from mlbackend_clients.serving import ServingClient
from mlbackend_models.loader import load_artifact
from mlbackend_runtime.server import RunningServer
from mlbackend_training.config import parse_config
from mlbackend_training.tabular import format_result, train_from_config

from conftest import Connect, StartService

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "churn"
RAW = yaml.safe_load((EXAMPLE / "churn.yaml").read_text())
NAME = "models/churn"


def config(data: Path, **changes: Any) -> Any:
    raw = json.loads(json.dumps(RAW))
    raw["data"] = {"path": str(data)}
    raw["estimator"] = {"name": "random_forest", "params": {"n_estimators": 40}}
    raw.update(changes)
    return parse_config(raw)


@pytest.fixture
async def registry_server(start_service: StartService) -> RunningServer:
    return await start_service("registry")


@pytest.fixture
def registry(registry_server: RunningServer, connect: Connect) -> RegistryClient:
    client = connect("registry", registry_server)
    assert isinstance(client, RegistryClient)
    return client


async def _version(registry: RegistryClient, ref: str) -> r.ModelVersion:
    got = await registry.stub.GetModelVersion(
        r.GetModelVersionRequest(name=f"{NAME}/versions/{ref}")
    )
    return got.model_version


NOT_LOADED = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE,
              grpc.StatusCode.FAILED_PRECONDITION)  # fmt: skip


async def predict(
    serving: ServingClient, model: str, version: r.ModelVersion, rows: np.ndarray[Any, Any]
) -> serving_pb2.PredictResponse:
    """Serving's answer for ``rows`` (values typed as the signature says; NaN = null),
    waiting (bounded) while serving has not loaded the promoted version yet."""
    spec = list(version.signature.features)
    request = serving_pb2.PredictRequest(
        model=model,
        rows=[
            c.FeatureMap(values={
                s.name: c.Value(null_value=0) if np.isnan(v)
                else c.Value(int64_value=int(v)) if s.dtype == c.DATA_TYPE_INT64
                else c.Value(double_value=float(v))
                for s, v in zip(spec, row, strict=True)
            })
            for row in rows
        ],
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            return await serving.stub.Predict(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in NOT_LOADED or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_csv_config_registers_promotes_serves_and_refuses_a_weak_run(
    registry_server: RunningServer,
    registry: RegistryClient,
    start_service: StartService,
    connect: Connect,
    tmp_path: Path,
) -> None:
    cfg = config(EXAMPLE / "churn.csv")
    first = await train_from_config(cfg, tmp_path, registry)
    assert (first.version, first.promoted, first.champion_version) == (1, True, None)

    got = await _version(registry, "production")
    assert got.version == 1
    names = [s.name for s in got.signature.features]
    assert names == cfg.features.names
    dtypes = {s.name: s.dtype for s in got.signature.features}
    assert dtypes["contract"] == c.DATA_TYPE_INT64 and dtypes["tenure_months"] == c.DATA_TYPE_DOUBLE
    assert {s.name for s in got.signature.features if s.nullable} >= {"data_usage_gb", "region"}
    assert got.output.decision_threshold == pytest.approx(first.run.threshold.threshold)
    assert [v.int64_value for v in got.output.classes] == [0, 1]
    assert got.metrics["pr_auc"] == pytest.approx(first.summary["evaluation"]["model"]["pr_auc"])
    assert "majority.pr_auc" in got.metrics and "rule_scorer.pr_auc" not in got.metrics
    assert json.loads(got.params["categories"])["contract"] == [
        "month-to-month", "one-year", "two-year"
    ]  # fmt: skip
    assert json.loads(got.params["label"]) == {"column": "churned", "0": "no", "1": "yes"}
    assert first.inputs.data.sha256 in got.lineage.source and cfg.digest() in got.lineage.source
    assert got.lineage.row_count == len(first.run.split.train)
    assert got.lineage.run_uri.endswith(first.run_id)
    assert got.tags["training.config_sha256"] == cfg.digest()
    assert len(got.baseline_statistics.features) == len(names)
    assert {"model_card.md", "pr_curve.png", "roc_curve.png", "confusion_matrix.png"} <= {
        a.rsplit("/", 1)[-1] for a in got.attachments
    }
    card = (first.directory / "model_card.md").read_text()
    assert "majority class only" in card and "0=month-to-month" in card

    # Serving follows the registry and answers with the trained pipeline's probabilities.
    estimator = load_artifact(first.directory / "model.skops", expected_sha256=got.artifact.sha256)
    test = first.run.split.test
    rows = test.values[:20]
    server = await start_service("serving", registry=registry_server.address)
    serving = connect("serving", server)
    assert isinstance(serving, ServingClient)
    response = await predict(serving, "churn", got, rows)
    assert response.version == 1
    served = np.array([p.probabilities for p in response.predictions])
    np.testing.assert_allclose(served, estimator.predict_proba(rows), rtol=0, atol=1e-9)
    decided = [p.label.int64_value for p in response.predictions]
    assert decided == [int(p >= got.output.decision_threshold) for p in served[:, 1]]

    # A deliberately weak configuration: registered, not promoted, the reason audited.
    weak_cfg = config(
        EXAMPLE / "churn.csv", estimator={"name": "decision_tree", "params": {"max_depth": 1}}
    )
    weak = await train_from_config(weak_cfg, tmp_path, registry)
    assert (weak.version, weak.promoted, weak.champion_version) == (2, False, 1)
    assert "worse than champion" in weak.decision
    assert (await _version(registry, "production")).version == 1
    events = await registry.stub.ListAuditEvents(
        r.ListAuditEventsRequest(parent=NAME, action=r.AUDIT_ACTION_NOTE)
    )
    notes = [e for e in events.audit_events if e.resource.endswith("/versions/2")]
    assert notes and "not promoted" in notes[0].reason
    assert "worse than champion" in notes[0].reason

    # Same seed and configuration: the same metrics (the champion comparison included).
    again = await train_from_config(cfg, tmp_path, registry)
    assert again.summary["evaluation"] == first.summary["evaluation"]
    assert again.run.lineage == first.run.lineage
    assert again.promoted  # equal to the champion is not worse


async def test_parquet_trains_like_csv_with_a_recall_target(
    registry: RegistryClient, tmp_path: Path
) -> None:
    parquet = tmp_path / "churn.parquet"
    pyarrow.parquet.write_table(pyarrow.csv.read_csv(EXAMPLE / "churn.csv"), parquet)
    threshold = {"recall": 0.7}
    gate = {"min_pr_auc": 0.3, "min_precision_at_recall": 0.2}
    from_csv = await train_from_config(
        config(EXAMPLE / "churn.csv", threshold=threshold, gate=gate), tmp_path, registry
    )
    from_parquet = await train_from_config(
        config(parquet, threshold=threshold, gate=gate), tmp_path, registry
    )
    assert from_parquet.summary["evaluation"] == from_csv.summary["evaluation"]
    assert from_parquet.inputs.data.sha256 != from_csv.inputs.data.sha256
    assert from_parquet.promoted and from_parquet.version == 2
    model = from_parquet.summary["evaluation"]["model"]
    assert model["recall_target"] == 0.7 and model["precision_at_recall"] > 0.2
    assert "max precision with recall >= 0.7" in from_parquet.summary["threshold"]["rule"]
    got = await _version(registry, "production")
    assert got.metrics["recall_target"] == 0.7
    assert got.tags["training.data_file"] == "churn.parquet"


@pytest.mark.e2e
async def test_cli_trains_from_the_example_config(
    registry_server: RunningServer, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLE / "churn.csv", tmp_path / "churn.csv")
    raw = dict(RAW, estimator={"name": "logistic_regression"})
    (tmp_path / "churn.yaml").write_text(yaml.safe_dump(raw))
    cli = [sys.executable, "-m", "mlbackend_cli", "train", "--config", str(tmp_path / "churn.yaml"),
           "--registry", registry_server.address, "--data-dir", str(tmp_path / "data")]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, [*cli, "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["registry"]["promoted"] and summary["registry"]["version"] == 1
    assert await asyncio.to_thread(Path(summary["run_dir"], "model_card.md").exists)
    human = await asyncio.to_thread(
        subprocess.run, [*cli, "--no-promote"], capture_output=True, text=True, timeout=120
    )
    assert human.returncode == 0, human.stderr
    assert "registered churn@2" in human.stdout and "--no-promote given" in human.stdout


PLANS = EXAMPLE.parent / "plans"


async def test_multiclass_registers_promotes_and_serves_per_class_probabilities(
    registry_server: RunningServer,
    registry: RegistryClient,
    start_service: StartService,
    connect: Connect,
    tmp_path: Path,
) -> None:
    raw = yaml.safe_load((PLANS / "plans.yaml").read_text())
    raw["data"] = {"path": str(PLANS / "plans.csv")}
    first = await train_from_config(parse_config(raw), tmp_path, registry)
    assert (first.version, first.promoted) == (1, True), first.decision
    got = await registry.stub.GetModelVersion(
        r.GetModelVersionRequest(name="models/plans/versions/production")
    )
    version = got.model_version
    assert version.version == 1
    assert [v.int64_value for v in version.output.classes] == [0, 1, 2]
    assert not version.output.HasField("decision_threshold")
    assert json.loads(version.params["label"]) == {
        "column": "plan", "0": "basic", "1": "plus", "2": "premium"
    }  # fmt: skip
    assert "threshold" not in version.params
    assert version.tags["training.problem"] == "multiclass"
    ev = first.run.evaluation
    assert version.metrics["macro_f1"] == pytest.approx(ev.model.macro_f1)
    assert version.metrics["class_2.recall"] == pytest.approx(ev.model.per_class["premium"].recall)
    assert version.metrics["majority.macro_f1"] < version.metrics["macro_f1"]
    assert version.lineage.HasField("data_start_time")
    text = format_result(first)
    assert "3 classes (basic 1," in text and "registered plans@1" in text
    words = [line.split() for line in text.splitlines()]
    assert ["model", f"{ev.model.accuracy:.3f}", f"{ev.model.macro_f1:.3f}"] in [
        w[:3] for w in words
    ]

    # Serving follows the registry: per-class probabilities in code order, label = argmax.
    estimator = load_artifact(
        first.directory / "model.skops", expected_sha256=version.artifact.sha256
    )
    rows = first.run.split.test.values[:30]
    server = await start_service("serving", registry=registry_server.address)
    serving = connect("serving", server)
    assert isinstance(serving, ServingClient)
    response = await predict(serving, "plans", version, rows)
    assert response.version == 1
    served = np.array([p.probabilities for p in response.predictions])
    expected = estimator.predict_proba(rows)
    assert served.shape == (30, 3)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-9)
    labels = [p.label.int64_value for p in response.predictions]
    assert labels == expected.argmax(axis=1).tolist()
    assert len(set(labels)) > 1  # the rows are not all one class

    # A weak configuration: registered, refused against the champion's macro-F1.
    weak = dict(raw, estimator={"name": "decision_tree", "params": {"max_depth": 1}},
                gate={"must_beat_majority": False})  # fmt: skip
    second = await train_from_config(parse_config(weak), tmp_path, registry)
    assert (second.version, second.promoted, second.champion_version) == (2, False, 1)
    assert "macro-F1" in second.decision and "worse than champion's" in second.decision


async def test_no_timestamp_column_registers_no_time_range(
    registry: RegistryClient, tmp_path: Path
) -> None:
    cfg = config(EXAMPLE / "churn.csv", timestamp=None, split={"method": "stratified", "seed": 1})
    result = await train_from_config(cfg, tmp_path, registry)
    got = await _version(registry, str(result.version))
    assert not got.lineage.HasField("data_start_time")
    assert not got.lineage.HasField("data_end_time")
    assert not got.baseline_statistics.HasField("start_time")
    assert "UTC" not in got.lineage.source and "1970" not in got.lineage.source
    assert got.lineage.row_count == len(result.run.split.train)
