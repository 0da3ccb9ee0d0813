"""Two serving replicas behind one gateway; one is killed (SIGKILL) or stopped
(SIGTERM, as in a rolling update) under load.

Every service is its own ``mlbackend serve`` process on loopback: registry, feature
store, two serving replicas following the registry, and a gateway with
``--serving a,b`` (round_robin, retries of the idempotent serving Predict on
UNAVAILABLE; predictions on streams renewed every 100 messages). Sixteen closed-loop
callers send gateway Predicts for ~8 s (bounded by count too); after ~2 s one replica
gets ``kill -9``: at least 99.9 % must succeed. A replica stopped with SIGTERM drains
(its streams end, its in-flight calls finish): every request must succeed, and the
replica exits 0 well within its grace period.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
import skops.io as sio
from google.protobuf import timestamp_pb2
from sklearn.linear_model import LogisticRegression

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend.gateway.v1 import gateway_pb2 as g
from mlbackend.gateway.v1 import gateway_pb2_grpc
from mlbackend.registry.v1 import registry_pb2 as r
from mlbackend.serving.v1 import serving_pb2 as s
from mlbackend.serving.v1 import serving_pb2_grpc
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.registry import RegistryClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MODEL = "fraud"
VIEW = "user_stats"
STORED = ("amount_mean", "txn_count_24h", "amount_sum_24h")
SIGNATURE = [f"{VIEW}:{n}" for n in STORED]
USERS = 200
CONCURRENCY = 16
LOAD_SECONDS = 8.0
KILL_AFTER_SECONDS = 2.0
MAX_REQUESTS = 200_000


def _key(i: int) -> c.EntityKey:
    return c.EntityKey(join_keys={"user_id": c.Value(string_value=f"u{i}")})


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        self.metrics_ports: dict[str, int] = {}

    def start(self, label: str, service: str, *extra: str) -> str:
        ready = self.workdir / f"{label}.json"
        log = (self.workdir / f"{label}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "mlbackend_cli", "serve", service, "--host", "127.0.0.1",
             "--port", "0", "--metrics-port", "0", "--data-dir", str(self.workdir / label),
             "--ready-file", str(ready), "--grace-seconds", "2", *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, f"{label} exited: {self.log(label)}"
            assert time.monotonic() < deadline, f"{label} not ready in 60 s"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        address = str(info["address"])
        self.started[label] = (process, address)
        self.metrics_ports[label] = int(info["metrics_port"])
        return address

    def log(self, label: str) -> str:
        return (self.workdir / f"{label}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for process, _ in reversed(self.started.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in self.started.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def _model_requests(metrics_port: int) -> float:
    """Serving's ``mlbackend_model_requests_total`` for MODEL, from its /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlbackend_model_requests_total{") and f'model="{MODEL}"' in line
    )


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


async def _register(registry_address: str, features_address: str) -> None:
    """Feature view + service, rows for USERS, a model promoted to production."""
    definitions = f.ApplyDefinitionsRequest(
        entities=[
            f.Entity(name="user", join_keys=[f.JoinKey(name="user_id", dtype=c.DATA_TYPE_STRING)])
        ],
        feature_views=[
            f.FeatureView(
                name=VIEW,
                entities=["user"],
                features=[f.Feature(name=n, dtype=c.DATA_TYPE_DOUBLE) for n in STORED],
            )
        ],
        feature_services=[f.FeatureService(name="fraud_fs", feature_refs=SIGNATURE,
                                           outputs=SIGNATURE)],
    )  # fmt: skip
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 50, size=(USERS, len(STORED)))
    y = (x[:, 1] > 25).astype(int)
    estimator = LogisticRegression().fit(x, y)
    async with (
        FeatureStoreClient.connect(features_address) as fs,
        RegistryClient.connect(registry_address) as registry,
    ):
        await fs.stub.ApplyDefinitions(definitions, timeout=30)
        when = _timestamp(datetime.now(UTC) - timedelta(minutes=1))
        await fs.stub.WriteFeatures(
            f.WriteFeaturesRequest(
                batch=f.FeatureBatch(
                    feature_view=VIEW,
                    features=list(STORED),
                    rows=[
                        f.FeatureRow(
                            entity_key=_key(i),
                            event_time=when,
                            values=[c.Value(double_value=float(v)) for v in x[i]],
                        )
                        for i in range(USERS)
                    ],
                )
            ),
            timeout=30,
        )
        spec = r.ModelVersion(
            artifact=r.Artifact(format=c.ARTIFACT_FORMAT_SKOPS),
            signature=c.InputSignature(
                features=[c.FeatureSpec(name=n, dtype=c.DATA_TYPE_DOUBLE) for n in SIGNATURE]
            ),
            output=c.OutputSpec(
                kind=c.OUTPUT_KIND_CLASSIFIER,
                classes=[c.Value(int64_value=0), c.Value(int64_value=1)],
            ),
            feature_service="fraud_fs@1",
            input_example=[
                c.FeatureMap(
                    values={
                        n: c.Value(double_value=float(v))
                        for n, v in zip(SIGNATURE, x[0], strict=True)
                    }
                )
            ],
        )
        await registry.upload_version(
            f"models/{MODEL}", sio.dumps(estimator), spec, create_registered_model=True
        )
        await registry.stub.SetAlias(
            r.SetAliasRequest(parent=f"models/{MODEL}", alias="production", version=1),
            timeout=10,
        )


async def _wait_served(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = serving_pb2_grpc.ModelServingServiceStub(channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = await stub.ListModels(s.ListModelsRequest(), timeout=5)
            if any(m.model == MODEL and m.state == s.MODEL_STATE_READY for m in listed.models):
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"serving at {address} did not load {MODEL} in 60 s")


async def _load(
    gateway_address: str,
    victim: subprocess.Popen[bytes],
    metrics_ports: list[int],
    stop_with: signal.Signals,
) -> tuple[Counter[str], int, int, list[float]]:
    """Outcomes by status name, requests finished before and after the kill, and each
    replica's request count just before the kill."""
    outcomes: Counter[str] = Counter()
    issued = 0
    killed_at: float | None = None
    after_kill = 0
    served_before_kill: list[float] = []
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        stub = gateway_pb2_grpc.InferenceGatewayServiceStub(channel)
        started = time.monotonic()
        deadline = started + LOAD_SECONDS

        async def worker(w: int) -> None:
            nonlocal issued, after_kill
            i = w
            while issued < MAX_REQUESTS and time.monotonic() < deadline:
                issued += 1
                i = (i + 1) % USERS
                request = g.PredictRequest(model=MODEL, input=g.PredictionInput(entity_key=_key(i)))
                try:
                    answer = await stub.Predict(request, timeout=5)
                    assert len(answer.result.prediction.probabilities) == 2
                    outcomes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    outcomes[f"{exc.code().name}: {exc.details()}"] += 1
                if killed_at is not None:
                    after_kill += 1

        async def killer() -> None:
            nonlocal killed_at
            await asyncio.sleep(KILL_AFTER_SECONDS)
            for port in metrics_ports:
                served_before_kill.append(await asyncio.to_thread(_model_requests, port))
            os.kill(victim.pid, stop_with)
            killed_at = time.monotonic()

        await asyncio.wait_for(
            asyncio.gather(killer(), *(worker(w) for w in range(CONCURRENCY))),
            LOAD_SECONDS + 30,
        )
    total = sum(outcomes.values())
    return outcomes, total - after_kill, after_kill, served_before_kill


@pytest.mark.parametrize("stop_with", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_one_serving_replica_killed_under_load(
    processes: Processes, stop_with: signal.Signals
) -> None:
    registry = processes.start("registry", "registry")
    features = processes.start("features", "features")
    asyncio.run(_register(registry, features))
    replica_a = processes.start("serving-a", "serving", "--registry", registry)
    replica_b = processes.start("serving-b", "serving", "--registry", registry)
    for address in (replica_a, replica_b):
        asyncio.run(_wait_served(address))
    gateway = processes.start(
        "gateway", "gateway", "--registry", registry, "--features", features,
        "--serving", f"{replica_a},{replica_b}",
    )  # fmt: skip

    outcomes, before, after, per_replica = asyncio.run(
        _load(
            gateway,
            processes.started["serving-a"][0],
            [processes.metrics_ports["serving-a"], processes.metrics_ports["serving-b"]],
            stop_with,
        )
    )

    total = sum(outcomes.values())
    ok = outcomes["OK"]
    report = (
        f"{ok}/{total} succeeded ({ok / max(total, 1):.4%}); {before} finished before the "
        f"kill, {after} after; replicas a/b had served {per_replica} before the kill; "
        f"failures: {dict(o for o in outcomes.items() if o[0] != 'OK')}"
    )
    print(report)
    if stop_with == signal.SIGTERM:
        # Drained within the load's remaining ~6 s: no stream held it to its grace (20 s).
        assert processes.started["serving-a"][0].wait(5) == 0, report
        assert ok == total, report + "\n" + processes.log("gateway")
    else:
        assert processes.started["serving-a"][0].wait(5) == -signal.SIGKILL
    # round_robin spread the load over both replicas before the kill.
    assert min(per_replica) >= 0.2 * sum(per_replica), report
    assert after >= 100, report  # the surviving replica kept serving after the kill
    assert total >= 200, report
    assert ok >= 0.999 * total, report + "\n" + processes.log("gateway")
