"""Serving follows the registry: a real registry and a real serving in-process.

Versions are trained here, uploaded with ``RegistryClient.upload_version`` and promoted
with ``SetAlias``; serving loads, warms and swaps them in, also under load, and keeps
answering from its local cache while the registry is down.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2 as pb
from mlbackend.serving.v1 import serving_pb2
from mlbackend_clients.registry import RegistryClient
from mlbackend_clients.serving import ServingClient
from mlbackend_runtime.server import RunningServer

from conftest import Connect, StartService

MODEL = "fraud"
PARENT = f"models/{MODEL}"
FEATURES = [f"f{i}" for i in range(6)]
X_A, Y_A = make_classification(n_samples=300, n_features=6, random_state=1)
X_B, Y_B = make_classification(n_samples=300, n_features=6, random_state=9)
MODEL_A = HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(X_A, Y_A)
MODEL_B = HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(X_B, Y_B)
ROWS = X_B[:64]


def _spec(example: Any) -> pb.ModelVersion:
    return pb.ModelVersion(
        artifact=pb.Artifact(format=common_pb2.ARTIFACT_FORMAT_SKOPS),
        signature=common_pb2.InputSignature(
            features=[
                common_pb2.FeatureSpec(name=n, dtype=common_pb2.DATA_TYPE_DOUBLE) for n in FEATURES
            ]
        ),
        output=common_pb2.OutputSpec(kind=common_pb2.OUTPUT_KIND_CLASSIFIER),
        input_example=[
            common_pb2.FeatureMap(
                values={
                    n: common_pb2.Value(double_value=float(v))
                    for n, v in zip(FEATURES, row, strict=True)
                }
            )
            for row in example
        ],
    )


async def _upload(registry: RegistryClient, estimator: Any, x: Any) -> int:
    version = await registry.upload_version(
        PARENT, sio.dumps(estimator), _spec(x[:3]), create_registered_model=True
    )
    return int(version.version)


async def _alias(registry: RegistryClient, alias: str, version: int) -> None:
    await registry.stub.SetAlias(
        pb.SetAliasRequest(parent=PARENT, alias=alias, version=version),
        wait_for_ready=True,  # a restarted registry: the channel may still be backing off
        timeout=10,
    )


async def _predict(
    serving: ServingClient, rows: Any, alias: str | None = None, timeout: float = 5.0
) -> tuple[int, np.ndarray[Any, Any]]:
    request = serving_pb2.PredictRequest(
        model=MODEL,
        vectors=[
            common_pb2.FeatureVector(values=[common_pb2.Value(double_value=v) for v in row])
            for row in rows
        ],
    )
    if alias:
        request.version.alias = alias
    response = await serving.stub.Predict(request, timeout=timeout)
    return response.version, np.array([p.probabilities for p in response.predictions])


async def _eventually(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if await check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s")
        await asyncio.sleep(0.1)


@pytest.fixture
async def registry_server(start_service: StartService) -> RunningServer:
    return await start_service("registry")


@pytest.fixture
def registry(registry_server: RunningServer, connect: Connect) -> RegistryClient:
    client = connect("registry", registry_server)
    assert isinstance(client, RegistryClient)
    return client


async def _serving(
    start_service: StartService, connect: Connect, registry_server: RunningServer
) -> ServingClient:
    server = await start_service("serving", registry=registry_server.address)
    client = connect("serving", server)
    assert isinstance(client, ServingClient)
    return client


async def test_loads_every_aliased_version_at_start(
    start_service: StartService,
    connect: Connect,
    registry_server: RunningServer,
    registry: RegistryClient,
) -> None:
    await _alias(registry, "production", await _upload(registry, MODEL_A, X_A))
    await _alias(registry, "challenger", await _upload(registry, MODEL_B, X_B))
    await _upload(registry, MODEL_B, X_B)  # version 3: no alias, not loaded

    serving = await _serving(start_service, connect, registry_server)
    assert await serving.check_health() == "SERVING"
    version, proba = await _predict(serving, ROWS[:5])
    assert version == 1
    np.testing.assert_allclose(proba, MODEL_A.predict_proba(ROWS[:5]), rtol=0, atol=1e-9)
    version, proba = await _predict(serving, ROWS[:5], alias="challenger")
    assert version == 2
    np.testing.assert_allclose(proba, MODEL_B.predict_proba(ROWS[:5]), rtol=0, atol=1e-9)
    listed = await serving.stub.ListModels(serving_pb2.ListModelsRequest())
    assert [(m.version, list(m.aliases)) for m in listed.models] == [
        (1, ["production"]),
        (2, ["challenger"]),
    ]


@dataclass
class _Outcome:
    started: float
    finished: float
    version: int | None
    row: int
    proba: Any = None
    error: str = ""


async def test_promotion_under_load_fails_no_request(
    start_service: StartService,
    connect: Connect,
    registry_server: RunningServer,
    registry: RegistryClient,
) -> None:
    await _alias(registry, "production", await _upload(registry, MODEL_A, X_A))
    new = await _upload(registry, MODEL_B, X_B)
    serving = await _serving(start_service, connect, registry_server)
    assert (await _predict(serving, ROWS[:1]))[0] == 1

    outcomes: list[_Outcome] = []
    began = time.monotonic()
    stop_at = began + 10.0
    max_requests = 40_000

    async def worker(seed: int) -> None:
        i = seed
        while time.monotonic() < stop_at and len(outcomes) < max_requests:
            row = i % len(ROWS)
            i += 16
            started = time.monotonic()
            try:
                version, proba = await _predict(serving, ROWS[row : row + 1])
                outcomes.append(_Outcome(started, time.monotonic(), version, row, proba[0]))
            except Exception as exc:  # every failure counts
                outcomes.append(_Outcome(started, time.monotonic(), None, row, error=repr(exc)))

    async def promote() -> float:
        await asyncio.sleep(3.0)
        promoted = time.monotonic()
        await _alias(registry, "production", new)
        return promoted

    *_, promoted = await asyncio.gather(*(worker(s) for s in range(16)), promote())

    failed = [o for o in outcomes if o.error]
    assert not failed, failed[:3]
    first_new = min(o.finished for o in outcomes if o.version == new)
    after = [o for o in outcomes if o.started > first_new]
    old_after = [o for o in after if o.version != new]
    print(
        f"\npromotion under load: {len(outcomes)} requests in {time.monotonic() - began:.1f} s, "
        f"0 failed; new version first answered {first_new - promoted:.2f} s after the alias "
        f"moved; {len(old_after)} old answers to requests started after that"
    )
    assert first_new - promoted < 5.0
    assert not old_after
    # Each model's probabilities for every row, computed once (not per outcome: tens of
    # thousands of single-row calls would take longer than the test on a busy machine).
    expected = {new: MODEL_B.predict_proba(ROWS), 1: MODEL_A.predict_proba(ROWS)}
    for o in outcomes:
        want = expected[new if o.version == new else 1][o.row]
        np.testing.assert_allclose(o.proba, want, rtol=0, atol=1e-9)
    assert any(o.version == 1 for o in outcomes) and len(after) > 100

    async def old_unloaded() -> bool:
        listed = await serving.stub.ListModels(serving_pb2.ListModelsRequest())
        return [m.version for m in listed.models] == [new]

    await _eventually(old_unloaded, 5.0)


async def test_registry_down_serves_from_cache_and_follows_again(
    start_service: StartService,
    connect: Connect,
    registry_server: RunningServer,
    registry: RegistryClient,
) -> None:
    await _alias(registry, "production", await _upload(registry, MODEL_A, X_A))
    new = await _upload(registry, MODEL_B, X_B)
    first = await _serving(start_service, connect, registry_server)
    assert (await _predict(first, ROWS[:1]))[0] == 1

    port = registry_server.port
    await registry_server.stop(0)
    await asyncio.sleep(0.5)
    for _ in range(20):  # the registry being down changes nothing for requests
        version, proba = await _predict(first, ROWS[:4])
        assert version == 1
    np.testing.assert_allclose(proba, MODEL_A.predict_proba(ROWS[:4]), rtol=0, atol=1e-9)

    # A second server (same data dir, so the same cache) starts while it is still down.
    started = time.monotonic()
    second = await _serving(start_service, connect, registry_server)
    assert time.monotonic() - started < 10
    assert await second.check_health() == "SERVING"
    version, proba = await _predict(second, ROWS[:4])
    assert version == 1
    np.testing.assert_allclose(proba, MODEL_A.predict_proba(ROWS[:4]), rtol=0, atol=1e-9)

    # The registry comes back on its address: the first server resumes its stream from
    # the last revision it saw, the second takes a snapshot; both follow the promotion.
    back = await start_service("registry", port=port)
    assert back.port == port
    async with RegistryClient.connect(back.address) as again:
        await _alias(again, "production", new)

    for serving in (first, second):

        async def follows(serving: ServingClient = serving) -> bool:
            return (await _predict(serving, ROWS[:1]))[0] == new

        await _eventually(follows, 15.0)
        version, proba = await _predict(serving, ROWS[:4])
        np.testing.assert_allclose(proba, MODEL_B.predict_proba(ROWS[:4]), rtol=0, atol=1e-9)
