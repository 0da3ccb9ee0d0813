"""``mlbackend demo``: the main job on the embedded defaults, through the whole suite.

Starts the suite (registry, feature store, monitoring, serving following the registry,
gateway), runs the ``mlbackend train fraud`` flow against it (data → feature store →
point-in-time training set → model → quality gate → registry → alias ``production``),
waits until serving has loaded the promoted version, then replays a seeded sample of
unseen test-period transactions as live events: for each, the user's history state is
pushed to the feature store (as the stream scorer does) and the transaction is scored
through the gateway with its entity keys and request-time inputs. Prints rows with
probability, decision, version and latency, the confusion counts and latency
percentiles, checks the gateway's probabilities against the trained model offline,
shows monitoring's count and the clear error a transaction with a negative amount
gets, and stops every service cleanly.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from mlbackend.features.v1 import features_pb2
from mlbackend.gateway.v1 import gateway_pb2
from mlbackend.monitoring.v1 import monitoring_pb2
from mlbackend.serving.v1 import serving_pb2
from mlbackend_cli.up import Suite, SuiteError, report_stop
from mlbackend_clients.errors import decode_error
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.gateway import GatewayClient
from mlbackend_clients.monitoring import MonitoringClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_clients.serving import ServingClient
from mlbackend_clients.suite import CLIENT_CLASSES
from mlbackend_training import fraud_store
from mlbackend_training.fraud_features import HISTORY_VIEW
from mlbackend_training.pipeline import TrainingConfig, fraud_probability
from mlbackend_training.run_local import format_summary
from mlbackend_training.train_flow import ALIAS, MODEL, FlowResult, train_and_register

SAMPLE_SIZE = 400
SHOWN = 8
LOAD_TIMEOUT_SECONDS = 60.0


def run_demo(settings: Mapping[str, Any], *, seed: int = 7) -> int:
    data_dir = Path(settings.get("data_dir", "data"))
    print("[1/4] starting the suite (serving follows the registry)", flush=True)
    with tempfile.TemporaryDirectory(prefix="mlbackend-demo-") as tmp:
        suite = Suite({**settings, "grace_seconds": 5.0}, ephemeral_ports=True, workdir=Path(tmp))
        ok = False
        try:
            suite.start()
            print(suite.table(), flush=True)
            ok = asyncio.run(_demo(suite, data_dir, seed))
        except SuiteError as exc:
            print(f"mlbackend demo: {exc}", file=sys.stderr)
        except KeyboardInterrupt:  # Ctrl-C reaches only this process: stop the suite
            print("mlbackend demo: interrupted; stopping the suite", file=sys.stderr)
        finally:
            code = report_stop(suite.stop())
    print("all services stopped cleanly" if code == 0 else "a service failed to stop")
    return 0 if ok and code == 0 else 1


async def _demo(suite: Suite, data_dir: Path, seed: int) -> bool:
    address = {name: child.address for name, child in suite.children.items()}
    healthy = True
    for name, target in address.items():
        async with CLIENT_CLASSES[name].connect(target) as client:
            status = await client.check_health(timeout=5)
        healthy &= status == "SERVING"
        print(f"  {name:<11} health {status}")
    registry = RegistryClient.connect(address["registry"])
    features = FeatureStoreClient.connect(address["features"])
    serving = ServingClient.connect(address["serving"])
    gateway = GatewayClient.connect(address["gateway"])
    monitoring = MonitoringClient.connect(address["monitoring"])
    async with registry, features, serving, gateway, monitoring:
        print(f"\n[2/4] mlbackend train fraud: {MODEL} through the suite", flush=True)
        result = await train_and_register(
            TrainingConfig(),
            data_dir,
            registry,
            features,
            progress=True,
            on_progress=lambda text: print(f"  {text}", flush=True),
        )
        print(format_summary(result.summary), flush=True)
        print(result.decision, flush=True)
        if not result.promoted:
            print("the quality gate refused the model: nothing new to serve", file=sys.stderr)
            return False
        version = result.version
        print(f"\n[3/4] waiting for serving to load {MODEL}@{version} ({ALIAS})", flush=True)
        waited = await _wait_until_served(serving, version)
        print(f"  serving has {MODEL}@{version} READY as {ALIAS} after {waited:.1f} s")
        print(f"\n[4/4] scoring {SAMPLE_SIZE} unseen test-period transactions through the "
              f"gateway (sample seed {seed})", flush=True)  # fmt: skip
        scored = await _score(gateway, features, result, seed)
        count = await _wait_for_count(monitoring, version, SAMPLE_SIZE)
        print(f"monitoring logged {count} predictions of {MODEL}@{version}")
        refused = await _refuse_a_negative_amount(gateway)
    return healthy and scored and count == SAMPLE_SIZE and refused


async def _wait_until_served(serving: ServingClient, version: int) -> float:
    started = time.monotonic()
    while True:
        listed = await serving.stub.ListModels(serving_pb2.ListModelsRequest(), timeout=5)
        if any(
            m.model == MODEL
            and m.version == version
            and ALIAS in m.aliases
            and m.state == serving_pb2.MODEL_STATE_READY
            for m in listed.models
        ):
            return time.monotonic() - started
        if time.monotonic() - started > LOAD_TIMEOUT_SECONDS:
            raise SuiteError(f"serving did not load {MODEL}@{version} in {LOAD_TIMEOUT_SECONDS} s")
        await asyncio.sleep(0.2)


async def _wait_for_count(monitoring: MonitoringClient, version: int, expected: int) -> int:
    """The gateway logs asynchronously in batches: wait (bounded) for them to land."""
    deadline = time.monotonic() + 15
    while True:
        counts = await monitoring.stub.CountPredictions(
            monitoring_pb2.CountPredictionsRequest(
                filter=monitoring_pb2.PredictionFilter(model=MODEL, version=version)
            ),
            timeout=5,
        )
        if counts.total_count >= expected or time.monotonic() > deadline:
            return int(counts.total_count)
        await asyncio.sleep(0.2)


async def _refuse_a_negative_amount(gateway: GatewayClient) -> bool:
    """Bad input gets a clear error: the store refuses a negative amount (the feature
    service's constraint on that request input), named as the caller wrote it."""
    request = gateway_pb2.PredictRequest(
        model=MODEL,
        input=gateway_pb2.PredictionInput(
            entity_key=fraud_store.user_key("u000001", "m00001"),
            request_features=fraud_store.request_features(-5.0, time.time(), 0.0),
        ),
    )
    try:
        await gateway.stub.Predict(request, timeout=10)
    except grpc.aio.AioRpcError as exc:
        error = decode_error(exc)
        named = ", ".join(f"{v.field}: {v.description}" for v in error.violations)
        print(f"a transaction with amount -5.0 is refused: {error.code.name} {named}")
        return error.code == grpc.StatusCode.INVALID_ARGUMENT and [
            v.field for v in error.violations
        ] == ["input.request_features.amount"]
    print("a transaction with amount -5.0 was scored: the feature service did not refuse it")
    return False


def _now() -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.GetCurrentTime()
    return out


async def _score(
    gateway: GatewayClient, features: FeatureStoreClient, result: FlowResult, seed: int
) -> bool:
    run = result.local.run
    dataset, test = run.dataset, run.split.test
    rows = np.sort(np.random.default_rng(seed).choice(len(test), SAMPLE_SIZE, replace=False))
    sample = test.take(rows)
    offline = fraud_probability(run.model, sample)
    index = {tid: i for i, tid in enumerate(dataset.transactions.transaction_id.tolist())}
    tx_rows = [index[t] for t in sample.transaction_id.tolist()]
    history = fraud_store.history_columns(dataset)
    far = fraud_store.far_from_home(dataset)
    tx = dataset.transactions
    latencies: list[float] = []
    decisions: list[tuple[int, int]] = []
    gaps: list[float] = []
    flagged_shown = 0
    threshold = float("nan")
    print(f"  {'transaction':<12} {'user':<8} {'amount':>10} {'P(fraud)':>9} "
          f"{'decision':<9} {'truth':<6} {'version':>7} {'latency':>9}")  # fmt: skip
    for shown, (i, expected_p) in enumerate(zip(tx_rows, offline, strict=True)):
        user, merchant = str(tx.user_id[i]), str(tx.merchant_id[i])
        # The replayed event's history state, as the stream scorer would push it now.
        await features.stub.WriteFeatures(
            features_pb2.WriteFeaturesRequest(
                batch=features_pb2.FeatureBatch(
                    feature_view=HISTORY_VIEW,
                    features=list(fraud_store.HISTORY_STORED),
                    rows=[
                        features_pb2.FeatureRow(
                            entity_key=fraud_store.user_key(user),
                            event_time=_now(),
                            values=[
                                fraud_store.value_pb(history[n][i])
                                for n in fraud_store.HISTORY_STORED
                            ],
                        )
                    ],
                )
            ),
            timeout=10,
        )
        request = gateway_pb2.PredictRequest(
            model=MODEL,
            input=gateway_pb2.PredictionInput(
                entity_key=fraud_store.user_key(user, merchant),
                request_features=fraud_store.request_features(
                    float(tx.amount[i]), float(tx.timestamp[i]), float(far[i])
                ),
            ),
        )
        started = time.perf_counter()
        answer = (await gateway.stub.Predict(request, timeout=10)).result
        latency = time.perf_counter() - started
        prediction = answer.prediction
        threshold = prediction.decision_threshold
        fraud = prediction.label.int64_value == 1
        truth = int(tx.is_fraud[i])
        probability = prediction.probabilities[1]
        latencies.append(latency)
        decisions.append((int(fraud), truth))
        gaps.append(abs(probability - float(expected_p)))
        # The first rows as they come, then rows where fraud was predicted or true.
        interesting = (fraud or truth) and flagged_shown < SHOWN
        if shown < SHOWN or interesting:
            flagged_shown += shown >= SHOWN
            print(
                f"  {tx.transaction_id[i]:<12} {user:<8} {tx.amount[i]:10.2f} "
                f"{probability:9.4f} {'FRAUD' if fraud else 'ok':<9} "
                f"{'fraud' if truth else 'ok':<6} {answer.version:>7} {latency * 1e3:7.2f}ms"
            )
    tp = sum(1 for d, t in decisions if d and t)
    fp = sum(1 for d, t in decisions if d and not t)
    fn = sum(1 for d, t in decisions if not d and t)
    tn = len(decisions) - tp - fp - fn
    p50, p95, p99 = np.percentile(np.array(latencies) * 1e3, [50, 95, 99])
    print(f"confusion over the sample (threshold {threshold:.4f}): "
          f"TP {tp}  FP {fp}  FN {fn}  TN {tn}")  # fmt: skip
    print(f"gateway latency per call: p50 {p50:.2f} ms  p95 {p95:.2f} ms  p99 {p99:.2f} ms")
    worst = max(gaps)
    print(f"gateway vs the trained model offline on the same rows: max |ΔP| {worst:.2e}")
    return worst < 1e-6
