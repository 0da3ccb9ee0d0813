"""Serving follows the registry: a real registry and a real serving in-process.

Versions are trained here, uploaded with ``RegistryClient.upload_version`` and promoted
with ``SetAlias``; serving loads, warms and swaps them in, also under load, and keeps
answering from its local cache while the registry is down. Operators load and unload
versions over the API in this mode too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier

from mlbackend.common.v1 import common_pb2
from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend.registry.v1 import registry_pb2 as pb
from mlbackend.serving.v1 import serving_pb2
from mlbackend_clients.inference import InferenceClient
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


# The acceptance: a promotion during 30 s of load at concurrency 16.
LOAD_SECONDS = 30.0
PROMOTE_AFTER = 10.0


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
    stop_at = began + LOAD_SECONDS
    max_requests = 200_000

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
        await asyncio.sleep(PROMOTE_AFTER)
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


@dataclass
class Stack:
    """A registry with a client, and a way to start serving against it."""

    registry: RegistryClient
    registry_server: RunningServer
    start_service: StartService
    connect: Connect

    async def serving(self) -> ServingClient:
        return await _serving(self.start_service, self.connect, self.registry_server)


@pytest.fixture
def stack(
    start_service: StartService,
    connect: Connect,
    registry_server: RunningServer,
    registry: RegistryClient,
) -> Stack:
    return Stack(registry, registry_server, start_service, connect)


async def _versions(serving: ServingClient) -> list[tuple[int, list[str]]]:
    listed = await serving.stub.ListModels(serving_pb2.ListModelsRequest(), timeout=10)
    return [(m.version, list(m.aliases)) for m in listed.models]


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code()


async def test_load_and_unload_over_the_api_in_registry_mode(stack: Stack) -> None:
    registry = stack.registry
    await _alias(registry, "production", await _upload(registry, MODEL_A, X_A))
    unaliased = await _upload(registry, MODEL_B, X_B)  # version 2
    await _alias(registry, "challenger", await _upload(registry, MODEL_B, X_B))  # version 3
    serving = await stack.serving()
    assert await _versions(serving) == [(1, ["production"]), (3, ["challenger"])]

    # Load a version no alias points at: downloaded, verified, warmed, served...
    loaded = await serving.stub.LoadModel(
        serving_pb2.LoadModelRequest(model=MODEL, version=common_pb2.VersionSelector(version=2)),
        timeout=30,
    )
    assert loaded.served_model.version == unaliased
    assert loaded.served_model.state == serving_pb2.MODEL_STATE_READY
    request = serving_pb2.PredictRequest(
        model=MODEL,
        version=common_pb2.VersionSelector(version=unaliased),
        vectors=[common_pb2.FeatureVector(values=[common_pb2.Value(double_value=v)
                                                   for v in ROWS[0]])],
    )  # fmt: skip
    answer = await serving.stub.Predict(request, timeout=5)
    np.testing.assert_allclose(
        [answer.predictions[0].probabilities], MODEL_B.predict_proba(ROWS[:1]), rtol=0, atol=1e-9
    )
    # ...and kept while the aliases move: challenger leaves 3 (retired), 2 stays.
    await _alias(registry, "challenger", 1)

    async def challenger_moved() -> bool:
        return await _versions(serving) == [(1, ["challenger", "production"]), (2, [])]

    await _eventually(challenger_moved, 15.0)

    # Unload the production version: not served, not followed any more...
    unloaded = await serving.stub.UnloadModel(
        serving_pb2.UnloadModelRequest(model=MODEL, version=1), timeout=10
    )
    assert [m.version for m in unloaded.unloaded] == [1]
    assert await _versions(serving) == [(2, [])]
    code = await _code(_predict(serving, ROWS[:1], alias="production"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert (await _predict(serving, ROWS[:1]))[0] == unaliased  # the default falls back
    await _alias(registry, "challenger", 3)  # a registry change: v1 stays unloaded

    async def v3_back() -> bool:
        return [v for v, _ in await _versions(serving)] == [2, 3]

    await _eventually(v3_back, 15.0)
    await asyncio.sleep(0.5)
    assert [v for v, _ in await _versions(serving)] == [2, 3]

    # ...until an alias moves onto it after the unload: a promotion wins over the unload.
    await _alias(registry, "canary", 1)

    async def promoted_again() -> bool:
        return (await _predict(serving, ROWS[:1], alias="production"))[0] == 1

    await _eventually(promoted_again, 15.0)

    # Loading by alias, and what is unknown to the registry.
    by_alias = await serving.stub.LoadModel(
        serving_pb2.LoadModelRequest(
            model=MODEL, version=common_pb2.VersionSelector(alias="challenger")
        ),
        timeout=30,
    )
    assert by_alias.served_model.version == 3
    for selector in (common_pb2.VersionSelector(version=9), common_pb2.VersionSelector(alias="x")):
        code = await _code(
            serving.stub.LoadModel(
                serving_pb2.LoadModelRequest(model=MODEL, version=selector), timeout=10
            )
        )
        assert code == grpc.StatusCode.NOT_FOUND
    assert (
        await _code(serving.stub.LoadModel(serving_pb2.LoadModelRequest(model="nope"), timeout=10))
        == grpc.StatusCode.NOT_FOUND
    )


async def test_oip_repository_extension_in_registry_mode(stack: Stack) -> None:
    registry = stack.registry
    await _alias(registry, "production", await _upload(registry, MODEL_A, X_A))
    await _upload(registry, MODEL_B, X_B)  # version 2, no alias
    server = await stack.start_service("serving", registry=stack.registry_server.address)
    async with InferenceClient.connect(server.address) as inference:
        index = await inference.stub.RepositoryIndex(oip.RepositoryIndexRequest(), timeout=10)
        assert [(m.version, m.state) for m in index.models] == [
            ("1", "READY"),
            ("2", "UNAVAILABLE"),
        ]
        await inference.stub.RepositoryModelUnload(
            oip.RepositoryModelUnloadRequest(model_name=MODEL), timeout=10
        )
        ready = await inference.stub.ModelReady(oip.ModelReadyRequest(name=MODEL), timeout=10)
        assert not ready.ready
        index = await inference.stub.RepositoryIndex(
            oip.RepositoryIndexRequest(ready=True), timeout=10
        )
        assert list(index.models) == []
        # Load without a version: the production version again.
        await inference.stub.RepositoryModelLoad(
            oip.RepositoryModelLoadRequest(model_name=MODEL), timeout=30
        )
        ready = await inference.stub.ModelReady(oip.ModelReadyRequest(name=MODEL), timeout=10)
        assert ready.ready
        metadata = await inference.stub.ModelMetadata(
            oip.ModelMetadataRequest(name=MODEL), timeout=10
        )
        assert metadata.versions == ["1"]
