"""``mlbackend demo``: the main job on the embedded defaults.

Trains the fraud model on synthetic transactions, publishes it for serving, starts the
whole suite, scores a seeded sample of unseen test-period transactions through the
serving service, logs the predictions to monitoring, prints what happened and stops
every service cleanly. (When the gateway and the registry flow land, the model goes
through the registry and the scoring through the gateway.)
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.monitoring.v1 import monitoring_pb2
from mlbackend.serving.v1 import serving_pb2
from mlbackend_cli.up import Suite, SuiteError, report_stop
from mlbackend_clients.monitoring import MonitoringClient
from mlbackend_clients.serving import ServingClient
from mlbackend_clients.suite import CLIENT_CLASSES
from mlbackend_serving.core.model_dir import write_model_version
from mlbackend_training.pipeline import TrainingConfig
from mlbackend_training.run_local import LocalRun, format_summary, run_local

MODEL = "fraud_detection"
SAMPLE_SIZE = 400
SHOWN = 8


def run_demo(settings: Mapping[str, Any], *, seed: int = 7) -> int:
    data_dir = Path(settings.get("data_dir", "data"))
    print(f"[1/3] training {MODEL} on synthetic transactions (seed {seed})", flush=True)
    config = TrainingConfig()
    local = run_local(config, data_dir, progress=True)
    print(format_summary(local.summary), flush=True)
    if not local.run.gate.passed:
        print(f"quality gate refused the model: {local.run.gate.reason}", file=sys.stderr)
        return 1
    models = data_dir / "models"
    version = _publish(local, models)

    print(f"\n[2/3] starting the suite (serving {MODEL}@{version} from {models})", flush=True)
    with tempfile.TemporaryDirectory(prefix="mlbackend-demo-") as tmp:
        suite = Suite(
            {**settings, "grace_seconds": 5.0},
            ephemeral_ports=True,
            workdir=Path(tmp),
            extra_args={"serving": ["--model-dir", str(models)]},
        )
        try:
            suite.start()
            print(suite.table(), flush=True)
            ok = asyncio.run(_check_and_score(suite, local, version, seed))
        except SuiteError as exc:
            print(f"mlbackend demo: {exc}", file=sys.stderr)
            ok = False
        code = report_stop(suite.stop())
    print("all services stopped cleanly" if code == 0 else "a service failed to stop")
    return 0 if ok and code == 0 else 1


def _publish(local: LocalRun, models: Path) -> int:
    """The run's model as the next version of ``MODEL`` in serving's model directory."""
    existing = [int(p.name) for p in (models / MODEL).glob("*") if p.name.isdigit()]
    version = max(existing, default=0) + 1
    train = local.run.split.train
    nullable = [
        n for n, col in zip(train.names, train.values.T, strict=True) if np.isnan(col).any()
    ]
    directory = write_model_version(
        models,
        MODEL,
        version,
        local.run.model,
        list(train.names),
        input_example=np.nan_to_num(local.run.split.validation.values[:4]).tolist(),
        decision_threshold=local.run.threshold.threshold,
        nullable=nullable,
    )
    shutil.copy(local.directory / "model_card.md", directory / "model_card.md")
    return version


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def _check_and_score(suite: Suite, local: LocalRun, version: int, seed: int) -> bool:
    healthy = True
    for name, child in suite.children.items():
        async with CLIENT_CLASSES[name].connect(child.address) as client:
            status = await client.check_health(timeout=5)
        healthy &= status == "SERVING"
        print(f"  {name:<11} health {status}")
    print(f"\n[3/3] scoring {SAMPLE_SIZE} unseen test-period transactions (sample seed {seed})")
    serving = ServingClient.connect(suite.children["serving"].address)
    monitoring = MonitoringClient.connect(suite.children["monitoring"].address)
    async with serving, monitoring:
        records = await _score(serving, local, version, seed)
        await monitoring.stub.IngestPredictions(
            monitoring_pb2.IngestPredictionsRequest(records=records)
        )
        counts = await monitoring.stub.CountPredictions(
            monitoring_pb2.CountPredictionsRequest(
                filter=monitoring_pb2.PredictionFilter(model=MODEL)
            )
        )
    print(f"monitoring logged {counts.total_count} predictions of {MODEL}@{version}")
    metrics_url = suite.children["serving"].metrics_url
    text = await asyncio.to_thread(_fetch, metrics_url)
    predict_ok = next(
        line.rsplit(" ", 1)[1]
        for line in text.splitlines()
        if line.startswith("mlbackend_rpc_requests_total") and 'method="Predict"' in line
    )
    print(f"serving metrics {metrics_url}: {float(predict_ok):.0f} Predict calls counted")
    return healthy and counts.total_count == SAMPLE_SIZE


async def _score(
    serving: ServingClient, local: LocalRun, version: int, seed: int
) -> list[monitoring_pb2.PredictionRecord]:
    test = local.run.split.test
    rows = np.sort(np.random.default_rng(seed).choice(len(test), SAMPLE_SIZE, replace=False))
    amounts = test.column("amount") if "amount" in test.names else None
    selector = common_pb2.VersionSelector(version=version)
    latencies: list[float] = []
    decisions: list[tuple[int, int]] = []
    flagged_shown = 0
    records: list[monitoring_pb2.PredictionRecord] = []
    print(f"  {'transaction':<12} {'user':<8} {'amount':>10} {'P(fraud)':>9} "
          f"{'decision':<9} {'truth':<6} {'version':>7} {'latency':>9}")  # fmt: skip
    for shown, row in enumerate(rows):
        values = [
            common_pb2.Value(null_value=struct_pb2.NULL_VALUE)
            if np.isnan(x)
            else common_pb2.Value(double_value=x)
            for x in test.values[row]
        ]
        request = serving_pb2.PredictRequest(
            model=MODEL, version=selector, vectors=[common_pb2.FeatureVector(values=values)]
        )
        started = time.perf_counter()
        answer = await serving.stub.Predict(request, timeout=5)
        latency = time.perf_counter() - started
        prediction = answer.predictions[0]
        fraud = prediction.label.int64_value == 1
        truth = int(test.label[row])
        latencies.append(latency)
        decisions.append((int(fraud), truth))
        records.append(_record(test, int(row), answer, latency))
        # The first rows as they come, then the rows where fraud was predicted or true.
        interesting = (fraud or truth) and flagged_shown < SHOWN
        if shown < SHOWN or interesting:
            flagged_shown += shown >= SHOWN
            amount = f"{amounts[row]:10.2f}" if amounts is not None else f"{'-':>10}"
            print(
                f"  {test.transaction_id[row]:<12} {test.entity[row]:<8} {amount} "
                f"{prediction.probabilities[1]:9.4f} {'FRAUD' if fraud else 'ok':<9} "
                f"{'fraud' if truth else 'ok':<6} {answer.version:>7} {latency * 1e3:7.2f}ms"
            )
    tp = sum(1 for d, t in decisions if d and t)
    fp = sum(1 for d, t in decisions if d and not t)
    fn = sum(1 for d, t in decisions if not d and t)
    tn = len(decisions) - tp - fp - fn
    p50, p95, p99 = np.percentile(np.array(latencies) * 1e3, [50, 95, 99])
    print(f"confusion over the sample (threshold {prediction.decision_threshold:.4f}): "
          f"TP {tp}  FP {fp}  FN {fn}  TN {tn}")  # fmt: skip
    print(f"latency per call: p50 {p50:.2f} ms  p95 {p95:.2f} ms  p99 {p99:.2f} ms")
    return records


def _record(
    test: Any, row: int, answer: serving_pb2.PredictResponse, latency: float
) -> monitoring_pb2.PredictionRecord:
    moment = timestamp_pb2.Timestamp()
    moment.FromDatetime(datetime.now(UTC))
    features = {
        name: common_pb2.Value(double_value=float(x))
        for name, x in zip(test.names, test.values[row], strict=True)
        if not np.isnan(x)
    }
    return monitoring_pb2.PredictionRecord(
        prediction_id=f"demo-{test.transaction_id[row]}",
        prediction_time=moment,
        model=answer.model,
        version=answer.version,
        entity_key=common_pb2.EntityKey(
            join_keys={"user_id": common_pb2.Value(string_value=str(test.entity[row]))}
        ),
        features=features,
        output=answer.predictions[0],
        latency=duration_pb2.Duration(nanos=int(latency * 1e9)),
    )
