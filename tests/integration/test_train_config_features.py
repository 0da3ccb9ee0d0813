"""`mlbackend train --config` with a feature service, through a real feature store,
registry, serving and gateway in-process.

The label file holds only (customer, time, label); the training set is the feature
service's point-in-time read at each row's time. Every customer's stored values change
after some of its label rows, so a leak would show: a few rows are checked exactly
against values worked out by hand from what was written before their time. The
version records the feature service as ``name@version`` and a signature equal to the
service's outputs; serving (following the registry) and the gateway (reading the
feature service online) answer with the artifact's own probabilities.
"""

from __future__ import annotations

import asyncio
import csv
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend.gateway.v1 import gateway_pb2 as g
from mlbackend.registry.v1 import registry_pb2 as r
from mlbackend.serving.v1 import serving_pb2
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.gateway import GatewayClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_clients.serving import ServingClient
from mlbackend_models.loader import load_artifact
from mlbackend_training.config import ConfigError, parse_config
from mlbackend_training.tabular import train_from_config

from conftest import Connect, StartService

T0 = datetime(2025, 3, 1, tzinfo=UTC)
CUSTOMERS = [f"c{i:02d}" for i in range(60)]
SNAPSHOTS = 4  # stored values per customer, every 10 days
PLANS = ("basic", "premium", "family")  # "family" is outside the one-hot's categories
SPEND_MEAN, SPEND_STD = 50.0, 10.0
OUTPUTS = ["spend_z", "customer_stats:visits", "plan=basic", "plan=premium", "plan=__other__"]


def snapshot_time(i: int, k: int) -> datetime:
    return T0 + timedelta(days=10 * k, hours=i)


def stored(i: int, k: int) -> tuple[float, int, str]:
    """Customer ``i``'s (monthly_spend, visits, plan) from its ``k``-th snapshot on."""
    return 30.0 + (i * 7 + k * 13) % 50, (i + 3 * k) % 9, PLANS[(i + k) % 3]


def expected_row(i: int, k: int) -> list[float]:
    """The service's outputs for values ``stored(i, k)``, by hand."""
    spend, visits, plan = stored(i, k)
    onehot = [float(plan == "basic"), float(plan == "premium"), float(plan == "family")]
    return [(spend - SPEND_MEAN) / SPEND_STD, float(visits), *onehot]


def label_rows() -> list[tuple[str, datetime, int, int]]:
    """(customer, time, label, snapshot in force): 5 days after each snapshot, i.e.
    before the next one is stamped, plus one row at exactly the third snapshot's time."""
    out = []
    for i, customer in enumerate(CUSTOMERS):
        moments = [(snapshot_time(i, k) + timedelta(days=5), k) for k in range(SNAPSHOTS)]
        moments.append((snapshot_time(i, 2), 2))
        for when, k in moments:
            z, visits, *_ = expected_row(i, k)
            label = int(z + 0.15 * visits > 0.4) ^ int((i * 3 + k) % 11 == 0)
            out.append((customer, when, label, k))
    return sorted(out, key=lambda row: (row[1], row[0]))


def key(customer: str) -> c.EntityKey:
    return c.EntityKey(join_keys={"customer_id": c.Value(string_value=customer)})


def definitions() -> f.ApplyDefinitionsRequest:
    return f.ApplyDefinitionsRequest(
        entities=[
            f.Entity(
                name="customer",
                join_keys=[f.JoinKey(name="customer_id", dtype=c.DATA_TYPE_STRING)],
            )
        ],
        feature_views=[
            f.FeatureView(
                name="customer_stats",
                entities=["customer"],
                features=[
                    f.Feature(name="monthly_spend", dtype=c.DATA_TYPE_DOUBLE),
                    f.Feature(name="visits", dtype=c.DATA_TYPE_INT64),
                    f.Feature(name="plan", dtype=c.DATA_TYPE_STRING),
                ],
            )
        ],
        feature_services=[
            f.FeatureService(
                name="churn_fs",
                feature_refs=[
                    "customer_stats:monthly_spend",
                    "customer_stats:visits",
                    "customer_stats:plan",
                ],
                transforms=[
                    f.Transform(
                        output="spend_z",
                        standard_scale=f.Transform.StandardScale(
                            input="customer_stats:monthly_spend", mean=SPEND_MEAN, std=SPEND_STD
                        ),
                    ),
                    f.Transform(
                        output="plan",
                        one_hot=f.Transform.OneHot(
                            input="customer_stats:plan",
                            categories=["basic", "premium"],
                            include_other=True,
                        ),
                    ),
                ],
                outputs=OUTPUTS,
            )
        ],
    )


async def write_snapshots(fs: FeatureStoreClient) -> None:
    """Every snapshot of every customer, in one batch per snapshot index."""
    for k in range(SNAPSHOTS):
        rows = []
        for i, customer in enumerate(CUSTOMERS):
            spend, visits, plan = stored(i, k)
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(snapshot_time(i, k))
            rows.append(
                f.FeatureRow(
                    entity_key=key(customer),
                    event_time=stamp,
                    values=[
                        c.Value(double_value=spend),
                        c.Value(int64_value=visits),
                        c.Value(string_value=plan),
                    ],
                )
            )
        await fs.stub.WriteFeatures(
            f.WriteFeaturesRequest(
                batch=f.FeatureBatch(
                    batch_id=f"snapshot-{k}",
                    feature_view="customer_stats",
                    features=["monthly_spend", "visits", "plan"],
                    rows=rows,
                )
            ),
            timeout=30,
        )


def write_labels(path: Path) -> list[tuple[str, datetime, int, int]]:
    rows = label_rows()
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["customer_id", "event_time", "upgraded"])
        for customer, when, label, _ in rows:
            out.writerow([customer, when.strftime("%Y-%m-%dT%H:%M:%SZ"), label])
    return rows


def config_for(data: Path, **changes: object) -> object:
    raw: dict[str, object] = {
        "model": "upgrade",
        "data": {"path": str(data)},
        "entity_key": "customer_id",
        "timestamp": "event_time",
        "label": {"column": "upgraded"},
        "feature_service": "churn_fs",
        "estimator": {"name": "random_forest", "params": {"n_estimators": 30}},
        "split": {"method": "time", "validation_fraction": 0.2, "test_fraction": 0.2, "seed": 3},
        "gate": {"min_pr_auc": 0.0, "min_roc_auc": 0.0, "must_beat_majority": False},
    }
    raw.update(changes)
    return parse_config(raw)


# Until serving has loaded the promoted version it answers one of these.
NOT_YET = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
)


async def _until_served(call: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Serving loads a promoted version shortly after the alias moves (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in NOT_YET or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def as_value(dtype: int, v: float) -> c.Value:
    return c.Value(int64_value=int(v)) if dtype == c.DATA_TYPE_INT64 else c.Value(double_value=v)


async def test_feature_service_config_trains_point_in_time_and_serves(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    registry_server = await start_service("registry")
    features_server = await start_service("features")
    registry: RegistryClient = connect("registry", registry_server)
    fs: FeatureStoreClient = connect("features", features_server)
    applied = await fs.stub.ApplyDefinitions(definitions(), timeout=30)
    assert [ch.revision for ch in applied.changes if ch.kind == "feature_service"] == [1]
    await write_snapshots(fs)
    labels = write_labels(tmp_path / "upgrades.csv")

    cfg = config_for(tmp_path / "upgrades.csv")
    result = await train_from_config(cfg, tmp_path / "data", registry, fs)  # type: ignore[arg-type]
    assert (result.version, result.promoted) == (1, True)

    # The training matrix: each row's values as of its own time (none written later).
    matrix = result.inputs.features
    assert list(matrix.names) == OUTPUTS
    index = {(cust, int(when.timestamp())): n for n, (cust, when, _, _) in enumerate(labels)}
    for i, k in ((0, 0), (7, 1), (31, 3)):
        when = snapshot_time(i, k) + timedelta(days=5)
        row = matrix.values[index[(CUSTOMERS[i], int(when.timestamp()))]]
        np.testing.assert_allclose(row, expected_row(i, k), rtol=0, atol=1e-12)
    at_stamp = matrix.values[index[(CUSTOMERS[12], int(snapshot_time(12, 2).timestamp()))]]
    np.testing.assert_allclose(at_stamp, expected_row(12, 2), rtol=0, atol=1e-12)
    every = np.array([expected_row(CUSTOMERS.index(cust), k) for cust, _, _, k in labels])
    np.testing.assert_allclose(matrix.values, every, rtol=0, atol=1e-12)
    assert (matrix.label == [lab for _, _, lab, _ in labels]).all()

    # The version: the resolved feature service, a signature equal to its outputs.
    got = (
        await registry.stub.GetModelVersion(
            r.GetModelVersionRequest(name="models/upgrade/versions/production"), timeout=10
        )
    ).model_version
    assert got.feature_service == "churn_fs@1"
    service = (
        await fs.stub.GetFeatureService(f.GetFeatureServiceRequest(name="churn_fs@1"), timeout=10)
    ).feature_service
    assert [(s.name, s.dtype) for s in got.signature.features] == [
        (s.name, s.dtype) for s in service.output_schema
    ]
    assert [s.name for s in service.output_schema] == OUTPUTS
    assert "via feature service churn_fs@1" in got.lineage.source
    first, last = labels[0][1], labels[-1][1]
    assert got.lineage.data_start_time.ToDatetime(UTC) >= first
    assert got.lineage.data_end_time.ToDatetime(UTC) < last
    card = (result.directory / "model_card.md").read_text()
    assert "feature service `churn_fs@1`" in card

    # Serving follows the registry: the historical rows get the artifact's probabilities.
    estimator = load_artifact(result.directory / "model.skops", expected_sha256=got.artifact.sha256)
    serving_server = await start_service("serving", registry=registry_server.address)
    serving: ServingClient = connect("serving", serving_server)
    dtypes = [s.dtype for s in got.signature.features]
    assert dtypes[1] == c.DATA_TYPE_INT64  # visits, as the view stores it
    rows = matrix.values[:: max(1, len(matrix) // 25)]
    request = serving_pb2.PredictRequest(
        model="upgrade",
        rows=[
            c.FeatureMap(
                values={
                    n: as_value(t, float(v)) for n, t, v in zip(OUTPUTS, dtypes, row, strict=True)
                }
            )
            for row in rows
        ],
    )
    response = await _until_served(lambda: serving.stub.Predict(request, timeout=10))
    assert response.version == 1
    served = np.array([p.probabilities for p in response.predictions])
    np.testing.assert_allclose(served, estimator.predict_proba(rows), rtol=0, atol=1e-9)

    # The gateway reads the same feature service online (latest values) for serving.
    gateway_server = await start_service(
        "gateway",
        registry=registry_server.address,
        features=features_server.address,
        serving=serving_server.address,
    )
    gateway: GatewayClient = connect("gateway", gateway_server)
    for i in (4, 45):
        answer = await _until_served(
            lambda i=i: gateway.stub.Predict(
                g.PredictRequest(
                    model="upgrade", input=g.PredictionInput(entity_key=key(CUSTOMERS[i]))
                ),
                timeout=10,
            )
        )
        result_pb = answer.result
        assert (result_pb.version, result_pb.feature_service) == (1, "churn_fs@1")
        latest = np.array([expected_row(i, SNAPSHOTS - 1)])
        np.testing.assert_allclose(
            result_pb.prediction.probabilities,
            estimator.predict_proba(latest)[0],
            rtol=0,
            atol=1e-9,
        )
    assert not math.isnan(result.summary["evaluation"]["model"]["roc_auc"])


def test_a_feature_service_needs_a_timestamp_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"feature_service needs a timestamp column"):
        config_for(tmp_path / "x.csv", timestamp=None, split={"method": "stratified"})
