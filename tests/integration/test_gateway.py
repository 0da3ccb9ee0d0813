"""The gateway over real registry, feature store, serving and monitoring in-process.

A model is trained here on features the feature store computes (a feature service with
transforms and a request-time input), registered with that feature service, and served;
expected probabilities come from historical retrieval of the same features plus
``predict_proba`` on the estimator — never from the gateway's own code.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import ssl
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import skops.io as sio
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from mutations import mangled
from pki import pki
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression
from sweeps import sweep, sweep_streamed

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend.gateway.v1 import gateway_pb2 as g
from mlbackend.monitoring.v1 import monitoring_pb2 as m
from mlbackend.registry.v1 import registry_pb2 as r
from mlbackend_clients.errors import decode_error, decode_input_error
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.gateway import GatewayClient
from mlbackend_clients.monitoring import MonitoringClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_clients.streams import StreamLimits
from mlbackend_gateway import app as gateway_app
from mlbackend_gateway import http as gateway_http
from mlbackend_gateway.core.experiments import Experiment, Variant, assign
from mlbackend_gateway.core.model import VersionSelector
from mlbackend_gateway.core.pipeline import PipelineLimits
from mlbackend_runtime.server import RunningServer
from mlbackend_serving.core.model_dir import write_model_version

from conftest import Connect, StartService, loopback_settings

__all__ = ["pki"]  # the fixture, used by the JSON front's TLS test

MODEL = "fraud"
SIGNATURE = ["amount_z", "tx_ratio", "user_stats:avg_amount"]
USERS = [f"u{i}" for i in range(40)]
TX = [5.0, 20.0, 80.0]


def key(user: str) -> c.EntityKey:
    return c.EntityKey(join_keys={"user_id": c.Value(string_value=user)})


def ts(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def definitions() -> f.ApplyDefinitionsRequest:
    return f.ApplyDefinitionsRequest(
        entities=[
            f.Entity(name="user", join_keys=[f.JoinKey(name="user_id", dtype=c.DATA_TYPE_STRING)])
        ],
        feature_views=[
            f.FeatureView(
                name="user_stats",
                entities=["user"],
                ttl=duration_pb2.Duration(seconds=24 * 3600),
                features=[
                    f.Feature(name="amount", dtype=c.DATA_TYPE_DOUBLE),
                    f.Feature(name="avg_amount", dtype=c.DATA_TYPE_DOUBLE),
                ],
            )
        ],
        feature_services=[
            f.FeatureService(
                name="fraud_fs",
                feature_refs=["user_stats:amount", "user_stats:avg_amount"],
                # NaN and infinities pass the store: serving refuses what they become.
                request_inputs=[
                    f.RequestInput(
                        name="tx_amount",
                        dtype=c.DATA_TYPE_DOUBLE,
                        constraints=f.FeatureConstraints(nan_policy=f.NAN_POLICY_ALLOW),
                    )
                ],
                transforms=[
                    f.Transform(
                        output="amount_z",
                        standard_scale=f.Transform.StandardScale(
                            input="user_stats:amount", mean=30, std=10
                        ),
                    ),
                    f.Transform(
                        output="tx_ratio",
                        ratio=f.Transform.Ratio(
                            numerator="tx_amount", denominator="user_stats:avg_amount"
                        ),
                    ),
                ],
                outputs=SIGNATURE,
            )
        ],
    )


def request_features(tx: float) -> dict[str, c.Value]:
    return {"tx_amount": c.Value(double_value=tx)}


@dataclass
class Suite:
    gateway: GatewayClient
    gateway_server: RunningServer
    features_server: RunningServer
    monitoring: MonitoringClient
    registry: RegistryClient
    estimators: dict[int, Any]
    historical: dict[tuple[str, float], list[float]]


async def _historical(
    fs: FeatureStoreClient, when: datetime
) -> dict[tuple[str, float], list[float]]:
    rows = [
        f.EntityRow(
            entity_key=key(u),
            event_time=ts(when),
            request_inputs=c.FeatureMap(values=request_features(tx)),
        )
        for u in USERS
        for tx in TX
    ]
    out: dict[tuple[str, float], list[float]] = {}
    pairs = [(u, tx) for u in USERS for tx in TX]
    async for chunk in fs.stub.GetHistoricalFeatures(
        f.GetHistoricalFeaturesRequest(feature_service="fraud_fs@1", entity_rows=rows), timeout=20
    ):
        assert [s.name for s in chunk.schema] == SIGNATURE
        for offset, row in enumerate(chunk.rows):
            out[pairs[chunk.start_row_index + offset]] = [v.value.double_value for v in row.values]
    return out


def _version_spec(tags: dict[str, str], example: list[float]) -> r.ModelVersion:
    return r.ModelVersion(
        artifact=r.Artifact(format=c.ARTIFACT_FORMAT_SKOPS),
        signature=c.InputSignature(
            features=[c.FeatureSpec(name=n, dtype=c.DATA_TYPE_DOUBLE) for n in SIGNATURE]
        ),
        output=c.OutputSpec(
            kind=c.OUTPUT_KIND_CLASSIFIER, classes=[c.Value(int64_value=0), c.Value(int64_value=1)]
        ),
        feature_service="fraud_fs@1",
        tags=tags,
        input_example=[
            c.FeatureMap(
                values={n: c.Value(double_value=v) for n, v in zip(SIGNATURE, example, strict=True)}
            )
        ],
    )


async def build_suite(
    start_service: StartService,
    connect: Connect,
    tmp_path: Path,
    *,
    monitoring: bool = True,
    **gateway_settings: Any,
) -> Suite:
    registry_server = await start_service("registry")
    features_server = await start_service("features")
    monitoring_server = await start_service("monitoring")
    registry: RegistryClient = connect("registry", registry_server)
    fs: FeatureStoreClient = connect("features", features_server)
    await fs.stub.ApplyDefinitions(definitions(), timeout=10)
    rng = np.random.default_rng(7)
    now = datetime.now(UTC)
    await fs.stub.WriteFeatures(
        f.WriteFeaturesRequest(
            batch=f.FeatureBatch(
                feature_view="user_stats",
                features=["amount", "avg_amount"],
                rows=[
                    f.FeatureRow(
                        entity_key=key(u),
                        event_time=ts(now - timedelta(minutes=5)),
                        values=[
                            c.Value(double_value=float(rng.uniform(5, 60))),
                            c.Value(double_value=float(rng.uniform(10, 40))),
                        ],
                    )
                    for u in USERS
                ],
            )
        ),
        timeout=10,
    )
    # Training data: the store's own point-in-time retrieval of the feature service.
    historical = await _historical(fs, now)
    x = np.array([historical[(u, tx)] for u in USERS for tx in TX])
    y = (x[:, 1] > 1.5).astype(int)
    estimators = {
        1: LogisticRegression(C=1.0).fit(x, y),
        2: LogisticRegression(C=0.05).fit(x, y),
    }
    model_dir = tmp_path / "models"
    tags = {
        1: {},
        # Version 2 declares defaults: an unknown user still gets a prediction.
        2: {"gateway.default.amount_z": "0", "gateway.default.tx_ratio": "1",
            "gateway.default.user_stats:avg_amount": "25"},
    }  # fmt: skip
    for number, estimator in estimators.items():
        version = await registry.upload_version(
            f"models/{MODEL}",
            sio.dumps(estimator),
            _version_spec(tags[number], list(x[0])),
            create_registered_model=True,
        )
        assert version.version == number
        write_model_version(
            model_dir, MODEL, number, estimator, SIGNATURE, input_example=[list(x[0])]
        )
    await registry.stub.SetAlias(
        r.SetAliasRequest(parent=f"models/{MODEL}", alias="production", version=1)
    )
    serving_server = await start_service("serving", model_dir=model_dir)
    targets: dict[str, Any] = {
        "registry": registry_server.address,
        "features": features_server.address,
        "serving": serving_server.address,
        "http_port": 0,
    }
    if monitoring:
        targets["monitoring"] = monitoring_server.address
    targets.update(gateway_settings)
    gateway_server = await start_service("gateway", **targets)
    return Suite(
        gateway=connect("gateway", gateway_server),
        gateway_server=gateway_server,
        features_server=features_server,
        monitoring=connect("monitoring", monitoring_server),
        registry=registry,
        estimators=estimators,
        historical=historical,
    )


def predict_request(user: str, tx: float, model: str = MODEL, **kw: Any) -> g.PredictRequest:
    return g.PredictRequest(
        model=model,
        input=g.PredictionInput(entity_key=key(user), request_features=request_features(tx)),
        **kw,
    )


def expected(suite: Suite, version: int, user: str, tx: float) -> list[float]:
    row = np.array([suite.historical[(user, tx)]])
    return list(suite.estimators[version].predict_proba(row)[0])


def error_info(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return dict(info.metadata)
    return {}


async def _fails(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    out = []
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [v.field for v in bad.field_violations]
    return out


@pytest.fixture
async def suite(start_service: StartService, connect: Connect, tmp_path: Path) -> Suite:
    return await build_suite(start_service, connect, tmp_path)


async def test_predict_returns_the_models_real_probabilities(suite: Suite) -> None:
    response = await suite.gateway.stub.Predict(
        predict_request("u3", 80.0, include_feature_values=True), timeout=10
    )
    result = response.result
    assert (result.model, result.version, result.variant) == (MODEL, 1, "")
    assert result.feature_service == "fraud_fs@1"
    uuid.UUID(result.prediction_id)
    np.testing.assert_allclose(result.prediction.probabilities, expected(suite, 1, "u3", 80.0),
                               rtol=1e-9)  # fmt: skip
    assert result.prediction.confidence == pytest.approx(max(result.prediction.probabilities))
    assert [o.name for o in result.features] == SIGNATURE
    assert {o.action for o in result.features} == {g.FEATURE_ACTION_NONE}
    assert [o.value.double_value for o in result.features] == pytest.approx(
        suite.historical[("u3", 80.0)]
    )
    # PredictBatch: many entities, one call, request order, same numbers.
    pairs = [(u, tx) for u in USERS[:12] for tx in TX[:2]]
    batch = await suite.gateway.stub.PredictBatch(
        g.PredictBatchRequest(
            model=MODEL,
            version=c.VersionSelector(version=2),
            inputs=[
                g.PredictionInput(entity_key=key(u), request_features=request_features(tx))
                for u, tx in pairs
            ],
        ),
        timeout=10,
    )
    assert len(batch.results) == len(pairs)
    for (u, tx), got in zip(pairs, batch.results, strict=True):
        assert got.version == 2
        np.testing.assert_allclose(
            got.prediction.probabilities, expected(suite, 2, u, tx), rtol=1e-9
        )
    assert len({x.prediction_id for x in batch.results}) == len(pairs)


async def test_predictions_over_one_stream_answer_as_predict_does(suite: Suite) -> None:
    """StreamPredict: each message is a Predict with its own request id, answered in
    order with the model's real probabilities; the records name each message's id; a
    refused one ends the stream with Predict's status and its own request id."""
    call = suite.gateway.stub.StreamPredict()
    asked = [("u1", 5.0), ("u2", 80.0), ("u1", 20.0)]
    for i, (user, tx) in enumerate(asked):
        message = g.StreamPredictRequest(
            request=predict_request(user, tx), request_id=f"stream-{i}"
        )
        message.timeout.FromMilliseconds(5000)
        await call.write(message)
        result = (await call.read()).response.result
        assert result.version == 1
        np.testing.assert_allclose(
            result.prediction.probabilities, expected(suite, 1, user, tx), rtol=1e-9
        )
    deadline = time.monotonic() + 10
    while True:
        listed = await suite.monitoring.stub.ListPredictions(
            m.ListPredictionsRequest(filter=m.PredictionFilter(model=MODEL), page_size=10)
        )
        ids = {r.request_id for r in listed.records}
        if {"stream-0", "stream-1", "stream-2"} <= ids or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert {"stream-0", "stream-1", "stream-2"} <= ids
    unary = await _fails(suite.gateway.stub.Predict(predict_request("u1", 5.0, model="nope")))
    await call.write(
        g.StreamPredictRequest(request=predict_request("u1", 5.0, model="nope"), request_id="no")
    )
    streamed = await _fails(call.read())
    assert streamed.code() == unary.code() == grpc.StatusCode.NOT_FOUND
    assert streamed.details() == unary.details()
    assert dict(streamed.trailing_metadata() or ())["x-request-id"] == "no"


async def test_the_client_predicts_over_streams_as_predict_does(suite: Suite) -> None:
    """``GatewayClient.streamed_predict``: the real probabilities over one stream kept
    open, and a refusal raised with Predict's own status and details."""
    predict = suite.gateway.streamed_predict()
    for user, tx in [("u1", 5.0), ("u2", 80.0), ("u3", 20.0)]:
        response = await predict(predict_request(user, tx), timeout=5)
        assert response.result.version == 1
        np.testing.assert_allclose(
            response.result.prediction.probabilities, expected(suite, 1, user, tx), rtol=1e-9
        )
    assert predict.streams_open == 1
    bad = predict_request("u1", 5.0, model="nope")
    unary = await _fails(suite.gateway.stub.Predict(bad, timeout=5))
    streamed = await _fails(predict(bad, timeout=5))
    assert streamed.code() == unary.code() == grpc.StatusCode.NOT_FOUND
    assert streamed.details() == unary.details()
    assert predict.streams_open == 0  # the refusal ended it
    assert (await predict(predict_request("u4", 5.0), timeout=5)).result.version == 1
    # A caller's own request ids, on a stream and on the unary call alike.
    calls_only = suite.gateway.streamed_predict(StreamLimits(most=0))
    for sender, request_id in ((predict, "mine-1"), (calls_only, "mine-2")):
        envelope = g.StreamPredictRequest(request=predict_request("u5", 5.0), request_id=request_id)
        assert (await sender.send(envelope, timeout=5)).result.version == 1
    assert calls_only.streams_open == 0
    deadline = time.monotonic() + 10
    while True:
        listed = await suite.monitoring.stub.ListPredictions(
            m.ListPredictionsRequest(filter=m.PredictionFilter(model=MODEL), page_size=20)
        )
        ids = {r.request_id for r in listed.records}
        if {"mine-1", "mine-2"} <= ids or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert {"mine-1", "mine-2"} <= ids
    await predict.close()
    await calls_only.close()


async def test_a_stopping_gateway_ends_the_streams_its_callers_keep_open(suite: Suite) -> None:
    call = suite.gateway.stub.StreamPredict()
    await call.write(g.StreamPredictRequest(request=predict_request("u1", 5.0)))
    assert (await call.read()).response.result.version == 1
    started = time.monotonic()
    await suite.gateway_server.stop(10)
    assert time.monotonic() - started < 3
    # Cancelled while idle, or ended (OK) just after its answer.
    assert await call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK)


async def test_concurrent_predictions_share_upstream_calls_and_keep_their_own_answers(
    suite: Suite,
) -> None:
    registry = suite.gateway_server.registry

    def counts(dependency: str) -> tuple[float, float]:
        labels = {"dependency": dependency}
        calls = registry.get_sample_value("mlbackend_gateway_upstream_calls_total", labels)
        callers = registry.get_sample_value("mlbackend_gateway_upstream_callers_total", labels)
        return calls or 0.0, callers or 0.0

    before = {d: counts(d) for d in ("feature-store", "serving")}
    # Two model versions (two lanes), and unknown users whose missing features fail
    # only their own requests while they share calls with the others.
    asks = [(u, tx, 1 + i % 2) for i, (u, tx) in enumerate((u, tx) for u in USERS for tx in TX)]
    asks += [("nobody", 5.0, 1), ("nobody-else", 20.0, 1)]
    answers = await asyncio.gather(
        *(
            suite.gateway.stub.Predict(
                predict_request(u, tx, version=c.VersionSelector(version=v)), timeout=30
            )
            for u, tx, v in asks
        ),
        return_exceptions=True,
    )
    for (user, tx, version), answer in zip(asks, answers, strict=True):
        if user.startswith("nobody"):
            assert isinstance(answer, grpc.aio.AioRpcError)
            assert answer.code() == grpc.StatusCode.FAILED_PRECONDITION
            continue
        assert not isinstance(answer, BaseException), answer
        assert answer.result.version == version
        np.testing.assert_allclose(
            answer.result.prediction.probabilities, expected(suite, version, user, tx), rtol=1e-9
        )
    for dependency, (calls0, callers0) in before.items():
        calls, callers = counts(dependency)
        served = len(asks) if dependency == "feature-store" else len(asks) - 2
        assert callers - callers0 == served
        # Fewer calls than requests: concurrent requests for a version went together.
        # How many go together depends on how fast the upstream answers the first ones:
        # measured 10-29 calls for these 122 requests on session 20's code, 12-70 once
        # the services' unary paths got faster; 122 would mean none went together.
        assert calls - calls0 < served * 3 / 4, (dependency, calls - calls0)


async def test_values_serving_refuses_are_the_callers_error_when_the_caller_sent_them(
    suite: Suite,
) -> None:
    # NaN and infinite amounts make tx_ratio non-finite, which serving refuses. Sent
    # concurrently with good requests, they share calls with them; each fails alone,
    # naming its own input, and the others are answered.
    asks = [(u, tx) for u in USERS[:3] for tx in TX[:2]] + [("u1", float("nan")), ("u2", -np.inf)]
    answers = await asyncio.gather(
        *(suite.gateway.stub.Predict(predict_request(u, tx), timeout=30) for u, tx in asks),
        return_exceptions=True,
    )
    for (user, tx), answer in zip(asks, answers, strict=True):
        if np.isfinite(tx):
            assert not isinstance(answer, BaseException), answer
            np.testing.assert_allclose(
                answer.result.prediction.probabilities, expected(suite, 1, user, tx), rtol=1e-9
            )
            continue
        assert isinstance(answer, grpc.aio.AioRpcError)
        assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(answer) == ["input.request_features.tx_amount"]
        assert "tx_ratio, computed from it, was refused" in answer.details()
    batch = [g.PredictionInput(entity_key=key(u), request_features=request_features(tx))
             for u, tx in (("u1", 10.0), ("u2", float("inf")))]  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await suite.gateway.stub.PredictBatch(
            g.PredictBatchRequest(model=MODEL, inputs=batch), timeout=10
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == ["inputs[1].request_features.tx_amount"]


async def test_missing_features_fail_or_take_the_declared_defaults(suite: Suite) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await suite.gateway.stub.Predict(predict_request("nobody", 10.0), timeout=10)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = raised.value.details() or ""
    assert "amount_z (NOT_FOUND)" in details and "user_stats:avg_amount" in details
    # Each missing feature, machine-readable: google.rpc.PreconditionFailure.
    assert [(v.type, v.subject) for v in decode_error(raised.value).preconditions] == [
        ("FEATURE_NOT_FOUND", "input/amount_z"),
        ("FEATURE_NOT_FOUND", "input/tx_ratio"),
        ("FEATURE_NOT_FOUND", "input/user_stats:avg_amount"),
    ]
    # Version 2 declares defaults in its registry tags: filled, and said so.
    response = await suite.gateway.stub.Predict(
        predict_request("nobody", 10.0, version=c.VersionSelector(version=2),
                        include_feature_values=True),
        timeout=10,
    )  # fmt: skip
    outcomes = {o.name: o for o in response.result.features}
    assert {o.action for o in outcomes.values()} == {g.FEATURE_ACTION_DEFAULT_FILLED}
    assert outcomes["amount_z"].status == c.FEATURE_STATUS_NOT_FOUND
    assert outcomes["user_stats:avg_amount"].value.double_value == 25.0
    np.testing.assert_allclose(
        response.result.prediction.probabilities,
        suite.estimators[2].predict_proba(np.array([[0.0, 1.0, 25.0]]))[0],
        rtol=1e-9,
    )


async def test_bad_input_gets_clear_errors(suite: Suite) -> None:
    stub = suite.gateway.stub
    # A timestamp no clock reads (nanos below 0): the field is named, in a batch too.
    bad_time = c.Value(timestamp_value=timestamp_pb2.Timestamp(seconds=1, nanos=-1))
    item = g.PredictionInput(entity_key=key("u1"), request_features={"at": bad_time})
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Predict(g.PredictRequest(model=MODEL, input=item), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == ["input.request_features.at"]
    good = predict_request("u1", 1.0).input
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PredictBatch(g.PredictBatchRequest(model=MODEL, inputs=[good, item]))
    assert violations(raised.value) == ["inputs[1].request_features.at"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Predict(predict_request("u1", 1.0, model="nope"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Predict(g.PredictRequest(model=MODEL, input=g.PredictionInput(
            request_features=request_features(1.0))), timeout=10)  # fmt: skip
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == ["input.entity_key"]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Predict(
            g.PredictRequest(
                model=MODEL,
                input=g.PredictionInput(
                    entity_key=key("u1"), request_features={"tx_amount": c.Value(string_value="x")}
                ),
            ),
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == ["input.request_features.tx_amount"]
    # Everything wrong with an input comes back in one answer, named as the caller wrote it.
    typo = c.EntityKey(join_keys={"usr": c.Value(string_value="u1")})
    wrong = {"tx_amount": c.Value(string_value="x"), "colour": c.Value(string_value="red")}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Predict(g.PredictRequest(model=MODEL, input=g.PredictionInput(
            entity_key=typo, request_features=wrong)), timeout=10)  # fmt: skip
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == [
        "input.entity_key.user_id",
        "input.entity_key.usr",
        "input.request_features.colour",
        "input.request_features.tx_amount",
    ]
    assert raised.value.details() == (
        "feature store refused the inputs: 4 invalid input(s); first: "
        "input.entity_key.user_id: join key is missing"
    )
    # In a batch, by its position, even when it is the batch's only input.
    for good in (0, 1):
        inputs = [g.PredictionInput(entity_key=key("u1"), request_features=wrong)]
        inputs[:0] = [
            g.PredictionInput(entity_key=key("u2"), request_features=request_features(1))
        ] * good
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.PredictBatch(g.PredictBatchRequest(model=MODEL, inputs=inputs), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(raised.value) == [
            f"inputs[{good}].request_features.colour",
            f"inputs[{good}].request_features.tx_amount",
        ]
    # More problems than the store lists (50): the count is still the whole of them.
    inputs = [g.PredictionInput(entity_key=key("u1"), request_features=wrong)] * 30
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PredictBatch(g.PredictBatchRequest(model=MODEL, inputs=inputs), timeout=10)
    assert len(violations(raised.value)) == 50
    assert decode_error(raised.value).total_violations == 60  # for programs, from the details
    assert (raised.value.details() or "").startswith(
        "feature store refused the inputs: 60 invalid input(s), the first 50 listed; first: "
        "inputs[0].request_features.colour: "
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Predict(predict_request("u1", 1.0, version=c.VersionSelector(alias="nope")))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_partial_batch_predicts_the_good_inputs_and_names_the_bad(suite: Suite) -> None:
    """With ``partial_results`` each input whose own values fail gets the error it alone
    would have failed the call with; the others get the predictions they would alone,
    and monitoring gets one record per input (the failed ones with their status)."""
    wrong = {"tx_amount": c.Value(string_value="x"), "colour": c.Value(string_value="red")}
    inputs = [
        g.PredictionInput(entity_key=key("u1"), request_features=request_features(20.0)),
        # no stored features, and version 1 declares no defaults
        g.PredictionInput(entity_key=key("nobody"), request_features=request_features(5.0)),
        # refused by the feature store (types, unknown input)
        g.PredictionInput(entity_key=key("u2"), request_features=wrong),
        g.PredictionInput(entity_key=key("u3"), request_features=request_features(80.0)),
        # no entity key
        g.PredictionInput(request_features=request_features(5.0)),
        # refused by serving (a transform of it is infinite)
        g.PredictionInput(entity_key=key("u4"), request_features=request_features(np.inf)),
    ]
    request = g.PredictBatchRequest(model=MODEL, inputs=inputs, partial_results=True)
    answer = await suite.gateway.stub.PredictBatch(request, timeout=10)
    results = list(answer.results)
    assert len(results) == len(inputs)
    for position, (user, tx) in ((0, ("u1", 20.0)), (3, ("u3", 80.0))):
        assert not results[position].HasField("error")
        assert results[position].version == 1 and results[position].prediction_id
        np.testing.assert_allclose(
            results[position].prediction.probabilities, expected(suite, 1, user, tx), rtol=1e-9
        )
    failed = {i: decode_input_error(results[i].error) for i in (1, 2, 4, 5)}
    for i in failed:
        assert results[i].model == MODEL and not results[i].prediction_id, i
        assert not results[i].prediction.probabilities, i
    assert failed[1].code == grpc.StatusCode.FAILED_PRECONDITION
    assert {v.subject for v in failed[1].preconditions} == {
        "inputs[1]/amount_z", "inputs[1]/tx_ratio", "inputs[1]/user_stats:avg_amount"
    }  # fmt: skip
    assert failed[1].message.startswith("inputs[1]/")
    assert failed[2].code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in failed[2].violations] == [
        "inputs[2].request_features.colour", "inputs[2].request_features.tx_amount"
    ]  # fmt: skip
    assert [v.field for v in failed[4].violations] == ["inputs[4].entity_key"]
    assert [v.field for v in failed[5].violations] == ["inputs[5].request_features.tx_amount"]
    # The same batch without partial results fails whole, naming the first stage's culprits.
    request.partial_results = False
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await suite.gateway.stub.PredictBatch(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Errors that are no one input's still fail the call.
    request.partial_results, request.model = True, "nope"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await suite.gateway.stub.PredictBatch(request, timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # One record per input of the partial batch, plus one per input of the failed one.
    await record_counts(suite, 12)
    await asyncio.sleep(0.3)  # nothing more arrives
    counts = await record_counts(suite, 12)
    assert [(x.version, x.count, x.error_count) for x in counts.counts] == [(1, 12, 10)]


async def record_counts(
    suite: Suite, expected: int, which: m.PredictionFilter | None = None
) -> m.CountPredictionsResponse:
    """Monitoring's counts for the model (or ``which`` records) once it holds
    ``expected`` records (or after 10 s: records travel in batches, off the request
    path)."""
    deadline = time.monotonic() + 10
    while True:
        counts = await suite.monitoring.stub.CountPredictions(
            m.CountPredictionsRequest(filter=which or m.PredictionFilter(model=MODEL))
        )
        if counts.total_count >= expected or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


async def test_records_land_in_monitoring(suite: Suite) -> None:
    for user in USERS[:5]:
        await suite.gateway.stub.Predict(predict_request(user, 20.0), timeout=10)
    counts = await record_counts(suite, 5)
    assert counts.total_count == 5
    listed = await suite.monitoring.stub.ListPredictions(
        m.ListPredictionsRequest(filter=m.PredictionFilter(model=MODEL), page_size=10)
    )
    record = listed.records[0]
    assert record.version == 1 and record.feature_service == "fraud_fs@1"
    assert record.request_id and set(record.features) == set(SIGNATURE)
    assert len(record.output.probabilities) == 2


async def test_failed_attempts_are_recorded_with_their_status(suite: Suite) -> None:
    # "nobody" has no stored features and version 1 declares no defaults.
    with pytest.raises(grpc.aio.AioRpcError):
        await suite.gateway.stub.Predict(predict_request("nobody", 10.0), timeout=10)
    await suite.gateway.stub.Predict(predict_request(USERS[0], 20.0), timeout=10)
    counts = await record_counts(suite, 2)
    assert counts.total_count == 2
    assert [(x.version, x.count, x.error_count) for x in counts.counts] == [(1, 2, 1)]
    listed = await suite.monitoring.stub.ListPredictions(
        m.ListPredictionsRequest(filter=m.PredictionFilter(model=MODEL), page_size=10)
    )
    failed = [r for r in listed.records if r.status_code != 0]
    assert len(failed) == 1
    assert failed[0].status_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "amount_z" in failed[0].error_message
    assert not failed[0].output.probabilities and not failed[0].features
    assert failed[0].entity_key.join_keys["user_id"].string_value == "nobody"


def test_assignment_is_sticky_and_follows_weights() -> None:
    experiment = Experiment(
        name="experiments/e", model=MODEL, salt="s1",
        variants=(Variant("a", VersionSelector(1), 50), Variant("b", VersionSelector(2), 50)),
    )  # fmt: skip
    keys = [{"user_id": f"user-{i}"} for i in range(10_000)]
    first = [assign(experiment, k).name for k in keys]
    assert first == [assign(experiment, k).name for k in keys]
    share = first.count("a") / len(first)
    assert 0.47 <= share <= 0.53
    skewed = Experiment(
        name="experiments/e", model=MODEL, salt="s2",
        variants=(Variant("a", VersionSelector(1), 90), Variant("b", VersionSelector(2), 10)),
    )  # fmt: skip
    share = [assign(skewed, k).name for k in keys].count("a") / len(keys)
    assert 0.87 <= share <= 0.93


async def test_experiment_routes_sticky_with_shadow_never_returned(suite: Suite) -> None:
    stub = suite.gateway.stub
    created = await stub.CreateExperiment(
        g.CreateExperimentRequest(
            experiment_id="ab1",
            experiment=g.Experiment(
                model=MODEL,
                variants=[
                    g.Variant(
                        name="control", version=c.VersionSelector(alias="production"), weight=1
                    ),
                    g.Variant(name="treatment", version=c.VersionSelector(version=2), weight=1),
                ],
                shadow_variants=[g.Variant(name="shadow", version=c.VersionSelector(version=2))],
            ),
        ),
        timeout=10,
    )
    name = created.experiment.name
    assert name == "experiments/ab1" and created.experiment.salt
    assert created.experiment.state == g.EXPERIMENT_STATE_RUNNING
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.CreateExperiment(
            g.CreateExperimentRequest(experiment_id="ab2", experiment=created.experiment)
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    seen: dict[str, str] = {}
    for user in USERS:
        for _ in range(2):
            result = (await stub.Predict(predict_request(user, 20.0), timeout=10)).result
            assert result.variant in ("control", "treatment")
            assert result.experiment == name
            assert result.version == (1 if result.variant == "control" else 2)
            np.testing.assert_allclose(
                result.prediction.probabilities,
                expected(suite, result.version, user, 20.0),
                rtol=1e-9,
            )
            assert seen.setdefault(user, result.variant) == result.variant
    assert set(seen.values()) == {"control", "treatment"}
    # Shadow scorings land in monitoring, flagged, and never in a response.
    deadline = time.monotonic() + 10
    while True:
        shadow = await suite.monitoring.stub.CountPredictions(
            m.CountPredictionsRequest(
                filter=m.PredictionFilter(model=MODEL, variant="shadow", include_shadow=True)
            )
        )
        if shadow.total_count >= 2 * len(USERS) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert shadow.total_count == 2 * len(USERS)
    listed = await stub.ListExperiments(g.ListExperimentsRequest(model=MODEL))
    assert [e.name for e in listed.experiments] == [name]
    stopped = await stub.StopExperiment(g.StopExperimentRequest(name=name, reason="done"))
    assert stopped.experiment.state == g.EXPERIMENT_STATE_STOPPED
    after = (await stub.Predict(predict_request("u1", 20.0), timeout=10)).result
    assert (after.variant, after.experiment, after.version) == ("", "", 1)


async def test_shadow_of_a_partial_batch_peels_the_bad_inputs_too(suite: Suite) -> None:
    """A shadow variant scores a partial batch as the caller's variant does: the inputs
    its errors name fail alone, the others are scored and recorded as successes."""
    stub = suite.gateway.stub
    control = g.Variant(name="control", version=c.VersionSelector(alias="production"), weight=1)
    shadow_variant = g.Variant(name="shadow", version=c.VersionSelector(version=2))
    experiment = g.Experiment(model=MODEL, variants=[control], shadow_variants=[shadow_variant])
    await stub.CreateExperiment(
        g.CreateExperimentRequest(experiment_id="partial", experiment=experiment), timeout=10
    )
    wrong = {"tx_amount": c.Value(string_value="x")}
    inputs = [
        g.PredictionInput(entity_key=key("u1"), request_features=request_features(20.0)),
        g.PredictionInput(entity_key=key("u2"), request_features=wrong),  # refused by the store
        g.PredictionInput(entity_key=key("u3"), request_features=request_features(80.0)),
        g.PredictionInput(request_features=request_features(5.0)),  # no entity key
    ]
    request = g.PredictBatchRequest(model=MODEL, inputs=inputs, partial_results=True)
    answer = await stub.PredictBatch(request, timeout=10)
    assert [r.HasField("error") for r in answer.results] == [False, True, False, True]
    assert {r.variant for r in answer.results} == {"control"}
    shadow = m.PredictionFilter(model=MODEL, variant="shadow", include_shadow=True)
    counts = await record_counts(suite, len(inputs), shadow)
    await asyncio.sleep(0.3)  # nothing more arrives
    counts = await record_counts(suite, len(inputs), shadow)
    assert [(x.version, x.count, x.error_count) for x in counts.counts] == [(2, 4, 2)]
    listed = await suite.monitoring.stub.ListPredictions(
        m.ListPredictionsRequest(filter=shadow, page_size=10)
    )
    scored = {
        r.entity_key.join_keys["user_id"].string_value: list(r.output.probabilities)
        for r in listed.records
        if r.status_code == 0
    }
    assert set(scored) == {"u1", "u3"}
    for user, tx in (("u1", 20.0), ("u3", 80.0)):
        np.testing.assert_allclose(scored[user], expected(suite, 2, user, tx), rtol=1e-9)


async def test_feature_store_down_fails_fast_naming_it(suite: Suite) -> None:
    await suite.gateway.stub.Predict(predict_request("u1", 20.0), timeout=10)
    await suite.features_server.stop(0)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await suite.gateway.stub.Predict(predict_request("u1", 20.0), timeout=20)
    elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(raised.value) == {"dependency": "feature-store"}
    assert "feature-store" in (raised.value.details() or "")
    assert elapsed < 3.0


N_MANGLED = int(os.environ.get("MLBACKEND_TEST_MANGLED", "300"))
"""Bad requests per method in the mangled-request test (more for a longer search)."""


async def test_mangled_requests_get_the_callers_fault_codes_and_lose_nothing(
    suite: Suite,
) -> None:
    """Valid requests with bytes flipped, cut, inserted or repeated, or (gRPC) with
    fields set to edge values, cleared, added or removed (seeded), through gRPC and
    through the JSON front, get an answer or the caller's fault: a status from
    ``sweeps.CALLERS_FAULT`` (an INVALID_ARGUMENT naming its fields), an HTTP 4xx
    with a JSON error body. The gateway then still predicts as the offline computation
    does."""
    rng = random.Random(int(os.environ.get("MLBACKEND_TEST_SEED", "20261208")))
    predict = predict_request("u1", 20.0)
    pinned = predict_request("u3", 80.0, version=c.VersionSelector(alias="production"))
    batch = g.PredictBatchRequest(model=MODEL, inputs=[predict.input, pinned.input])
    partial = g.PredictBatchRequest(model=MODEL, inputs=[pinned.input], partial_results=True)
    service = "/mlbackend.gateway.v1.InferenceGatewayService/"
    seeds = {
        "Predict": (g.PredictResponse, [predict, pinned]),
        "PredictBatch": (g.PredictBatchResponse, [batch, partial]),
    }
    seen: set[grpc.StatusCode] = set()
    async with grpc.aio.insecure_channel(suite.gateway_server.address) as channel:
        for method, (response_type, messages) in seeds.items():
            seen |= await sweep(channel, service + method, response_type, messages, N_MANGLED, rng)
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= seen, seen
    streamed = [
        g.StreamPredictRequest(request=p, request_id=f"{i:032x}")
        for i, p in enumerate((predict, pinned), start=1)
    ]
    async with grpc.aio.insecure_channel(suite.gateway_server.address) as channel:
        codes = await sweep_streamed(
            channel,
            service + "StreamPredict",
            g.StreamPredictResponse,
            [streamed[:1], streamed, streamed[::-1]],
            N_MANGLED // 2,
            rng,
            request_streaming=True,
            response_streaming=True,
            # A message's own timeout may say its deadline has passed.
            also=frozenset({grpc.StatusCode.DEADLINE_EXCEEDED}),
        )
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes, codes

    port = gateway_app.http_port(suite.gateway_server)
    bodies = [
        json.dumps({"input": {"entityKey": {"joinKeys": {"user_id": {"stringValue": "u1"}}},
                              "requestFeatures": {"tx_amount": {"doubleValue": 20.0}}}}).encode(),
        json.dumps({"inputs": [{"entityKey": {"joinKeys": {"user_id": {"stringValue": "u3"}}},
                                "requestFeatures": {"tx_amount": {"doubleValue": 80.0}}}],
                    "partialResults": True}).encode(),
    ]  # fmt: skip
    statuses: set[int] = set()
    for _ in range(N_MANGLED):
        data = mangled(rng, bodies)
        route = "predictBatch" if data.lstrip().startswith(b'{"inputs"') else "predict"
        status, answer = await asyncio.to_thread(_post, port, f"/v1/models/{MODEL}:{route}", data)
        statuses.add(status)
        assert status == 200 or 400 <= status < 500, (data, status, answer)
        body = json.loads(answer)
        assert status == 200 or body["error"]["message"], (data, answer)
    assert {200, 400} <= statuses, statuses

    result = (await suite.gateway.stub.Predict(predict_request("u1", 20.0), timeout=10)).result
    np.testing.assert_allclose(
        result.prediction.probabilities, expected(suite, 1, "u1", 20.0), rtol=1e-9
    )

    # Last, as they may start experiments that route predictions: the other methods.
    control = g.Variant(name="a", version=c.VersionSelector(alias="production"), weight=1)
    other = g.Variant(name="b", version=c.VersionSelector(version=2), weight=3)
    experiment = g.Experiment(model=MODEL, variants=[control, other], description="d")
    created = await suite.gateway.stub.CreateExperiment(
        g.CreateExperimentRequest(experiment=experiment, experiment_id="e1"), timeout=10
    )
    name = created.experiment.name
    others = {
        "CreateExperiment": (g.CreateExperimentResponse, [g.CreateExperimentRequest(
            experiment=g.Experiment(model=MODEL, variants=[control], shadow_variants=[other]),
            experiment_id="e2")]),
        "GetExperiment": (g.GetExperimentResponse, [g.GetExperimentRequest(name=name)]),
        "ListExperiments": (g.ListExperimentsResponse, [g.ListExperimentsRequest(
            model=MODEL, page_size=1, state=g.EXPERIMENT_STATE_RUNNING)]),
        "StopExperiment": (g.StopExperimentResponse, [g.StopExperimentRequest(
            name=name, reason="r")]),
        "ListModels": (g.ListModelsResponse, [g.ListModelsRequest(page_size=1)]),
    }  # fmt: skip
    async with grpc.aio.insecure_channel(suite.gateway_server.address) as channel:
        for method, (response_type, messages) in others.items():
            codes = await sweep(
                channel, service + method, response_type, messages, N_MANGLED // 3, rng
            )
            assert grpc.StatusCode.OK in codes, (method, codes)


def _post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    """Status and body of a JSON POST, whatever the status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _http(
    url: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, str]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(text) if "json" in kind else text, kind
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode()), ""


async def test_json_front(suite: Suite) -> None:
    port = gateway_app.http_port(suite.gateway_server)
    assert port
    base = f"http://127.0.0.1:{port}"
    body = json.dumps(
        {"input": {"entityKey": {"joinKeys": {"user_id": {"stringValue": "u5"}}},
                   "requestFeatures": {"tx_amount": {"doubleValue": 80.0}}}}
    ).encode()  # fmt: skip
    registry = suite.gateway_server.registry

    def answered(route: str, code: int) -> float:
        labels = {"route": route, "code": str(code)}
        return registry.get_sample_value("mlbackend_http_requests_total", labels) or 0.0

    before = answered("predict", 200), answered("predict", 400)
    code, answer, _ = await asyncio.to_thread(_http, f"{base}/v1/models/{MODEL}:predict", body)
    assert code == 200, answer
    assert answer["result"]["version"] == "1"
    assert answered("predict", 200) == before[0] + 1
    np.testing.assert_allclose(
        answer["result"]["prediction"]["probabilities"], expected(suite, 1, "u5", 80.0), rtol=1e-9
    )
    code, answer, _ = await asyncio.to_thread(_http, f"{base}/healthz")
    assert (code, answer) == (200, {"status": "SERVING"})
    # A partial batch: the failed input's error in its result, details as in gRPC errors.
    partial = json.dumps({"inputs": [json.loads(body)["input"],
                                     {"requestFeatures": {"tx_amount": {"doubleValue": 1.0}}}],
                          "partialResults": True}).encode()  # fmt: skip
    code, answer, _ = await asyncio.to_thread(
        _http, f"{base}/v1/models/{MODEL}:predictBatch", partial
    )
    assert code == 200, answer
    good, bad = answer["results"]
    assert "error" not in good and len(good["prediction"]["probabilities"]) == 2
    assert bad["error"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad["error"]["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert bad["error"]["details"][0]["fieldViolations"][0]["field"] == "inputs[1].entity_key"
    code, models, _ = await asyncio.to_thread(_http, f"{base}/v1/models")
    assert code == 200 and models["models"][0]["model"] == MODEL
    assert models["models"][0]["featureService"] == "fraud_fs@1"
    code, text, _ = await asyncio.to_thread(_http, f"{base}/metrics")
    assert code == 200 and "mlbackend_http_requests_total" in text
    # Errors: the status table, the JSON error body.
    code, error, _ = await asyncio.to_thread(_http, f"{base}/v1/models/nope:predict", body)
    assert (code, error["error"]["status"]) == (404, "NOT_FOUND")
    code, error, _ = await asyncio.to_thread(
        _http, f"{base}/v1/models/{MODEL}:predict", b"{not json"
    )
    assert (code, error["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert answered("predict", 400) == before[1] + 1  # counted under its route
    # A deadline as gRPC writes it: met, past, malformed.
    predict = f"{base}/v1/models/{MODEL}:predict"
    code, _, _ = await asyncio.to_thread(_http, predict, body, headers={"grpc-timeout": "5S"})
    assert code == 200
    code, error, _ = await asyncio.to_thread(_http, predict, body, headers={"grpc-timeout": "1n"})
    assert (code, error["error"]["status"]) == (504, "DEADLINE_EXCEEDED")
    code, error, _ = await asyncio.to_thread(_http, predict, body, headers={"grpc-timeout": "2s"})
    assert (code, error["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert "grpc-timeout '2s'" in error["error"]["message"]
    code, error, _ = await asyncio.to_thread(_http, f"{base}/v1/models/{MODEL}:predict", b" [1, 2]")
    assert (code, error["error"]["message"]) == (
        400, "body: must be a JSON object (a PredictRequest)"
    )  # fmt: skip
    code, error, _ = await asyncio.to_thread(
        _http, f"{base}/v1/models/{MODEL}:predict", body, "text/plain"
    )
    assert code == 415
    unknown_user = {"user_id": {"stringValue": "zz"}}
    missing = json.dumps(
        {"input": {"entityKey": {"joinKeys": unknown_user},
                   "requestFeatures": {"tx_amount": {"doubleValue": 1}}}}
    )  # fmt: skip
    code, error, _ = await asyncio.to_thread(
        _http, f"{base}/v1/models/{MODEL}:predict", missing.encode()
    )
    assert (code, error["error"]["status"]) == (400, "FAILED_PRECONDITION")
    (failure,) = error["error"]["details"]
    assert failure["@type"] == "type.googleapis.com/google.rpc.PreconditionFailure"
    assert [v["subject"] for v in failure["violations"]] == [
        "input/amount_z", "input/tx_ratio", "input/user_stats:avg_amount"
    ]  # fmt: skip
    await suite.features_server.stop(0)
    code, error, _ = await asyncio.to_thread(_http, f"{base}/v1/models/{MODEL}:predict", body)
    assert (code, error["error"]["status"]) == (503, "UNAVAILABLE")
    assert error["error"]["details"][0]["metadata"] == {"dependency": "feature-store"}


async def _exchange(port: int, head: bytes) -> tuple[bytes, asyncio.StreamReader, Any]:
    """Sends a request head on a new connection; the first response head that comes back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5), reader, writer


async def test_json_front_framing(tmp_path: Path) -> None:
    """Bodies the small HTTP/1.1 server cannot, or need not yet, read."""
    server = await gateway_app.create_server(
        loopback_settings(tmp_path / "gateway"), registry=CollectorRegistry()
    )
    port = gateway_app.http_port(server)
    assert port
    post = b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    try:
        # curl asks before sending a body over 1 MB: it gets a 100 at once, not after its
        # one-second wait, and the request is then answered.
        head, reader, writer = await _exchange(
            port, post + b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert head == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        # No registry configured: the body was read, parsed and reached the pipeline.
        assert head.startswith(b"HTTP/1.1 503 ")
        writer.close()
        # A body too large is refused before it is sent: no 100, and the connection closes.
        head, reader, writer = await _exchange(
            port, post + b"Content-Length: 999999999\r\nExpect: 100-continue\r\n\r\n"
        )
        assert head.startswith(b"HTTP/1.1 413 ")
        assert b"Connection: close" in head
        writer.close()
        # A length that is not a number: where the body ends is unknown.
        head, reader, writer = await _exchange(port, post + b"Content-Length: 12abc\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        error = json.loads(await reader.readexactly(length))["error"]
        assert error["message"] == "Content-Length '12abc' is not a number of bytes"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        writer.close()
        head, reader, writer = await _exchange(
            port, post + b"Content-Length: 2\r\nContent-Length: 20\r\n\r\n{}"
        )
        assert head.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in head
        writer.close()
        head, reader, writer = await _exchange(port, post + b"Transfer-Encoding: chunked\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 411 ")
        writer.close()
    finally:
        await server.stop(0)


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_json_front_closes_idle_slow_and_surplus_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_http, "IDLE_SECONDS", 1.0)
    monkeypatch.setattr(gateway_http, "TRANSFER_SECONDS", 0.3)
    monkeypatch.setattr(gateway_http, "MAX_CONNECTIONS", 2)
    server = await gateway_app.create_server(
        loopback_settings(tmp_path / "gateway"), registry=CollectorRegistry()
    )
    port = gateway_app.http_port(server)
    assert port
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    writers = []
    try:
        # Two kept-alive connections, each answered once, take both places.
        kept = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(health)
            head, _ = await _read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            kept.append(reader)
        # A third is answered 503 and closed.
        head, reader, writer = await _exchange(port, health)
        writers.append(writer)
        assert head.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in head
        # Quiet for IDLE_SECONDS, the kept ones are closed, and their places free again.
        for reader in kept:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        head, reader, writer = await _exchange(port, health)
        writers.append(writer)
        assert head.startswith(b"HTTP/1.1 200 ")
        writer.close()
        # A head sent a piece at a time and never finished: closed as well.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        # A body that stops halfway: 408 after TRANSFER_SECONDS, then closed.
        post = b"POST /v1/models/m:predict HTTP/1.1\r\nContent-Type: application/json\r\n"
        head, reader, writer = await _exchange(port, post + b"Content-Length: 10\r\n\r\n{}")
        writers.append(writer)
        assert head.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in head
    finally:
        for writer in writers:
            writer.close()
        await server.stop(0)


@pytest.mark.parametrize("metrics_open", [False, True], ids=["token", "open"])
async def test_json_front_metrics_follow_the_metrics_port_rule(
    tmp_path: Path, metrics_open: bool
) -> None:
    """With tokens on, ``GET /metrics`` needs a token of any role, as the service's metrics
    port does, unless metrics are opened; ``/healthz`` never needs one (probes)."""
    tokens = tmp_path / "tokens"
    tokens.write_text("reader-token-0123456789 reader dashboards\n")
    server = await gateway_app.create_server(
        loopback_settings(tmp_path / "gateway", token_file=tokens, metrics_open=metrics_open),
        registry=CollectorRegistry(),
    )
    base = f"http://127.0.0.1:{gateway_app.http_port(server)}"
    try:
        code, answer, _ = await asyncio.to_thread(_http, f"{base}/metrics")
        if metrics_open:
            assert code == 200 and "mlbackend_http_requests_total" in answer
        else:
            assert (code, answer["error"]["status"]) == (401, "UNAUTHENTICATED")
        reader = {"Authorization": "Bearer reader-token-0123456789"}
        code, answer, _ = await asyncio.to_thread(_http, f"{base}/metrics", headers=reader)
        assert code == 200 and 'route="metrics"' in answer
        code, answer, _ = await asyncio.to_thread(_http, f"{base}/healthz")
        assert (code, answer) == (200, {"status": "SERVING"})
    finally:
        await server.stop(0)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
async def test_json_front_speaks_tls_beside_a_tls_port(
    tmp_path: Path, pki: Path, mutual: bool
) -> None:
    """With a certificate, the JSON front is HTTPS with the gRPC port's certificate; with a
    client CA it asks for a client certificate from that CA, as the gRPC port does."""
    server = await gateway_app.create_server(
        loopback_settings(
            tmp_path / "gateway",
            tls_cert=pki / "server.crt",
            tls_key=pki / "server.key",
            tls_client_ca=pki / "ca.crt" if mutual else None,
        ),
        registry=CollectorRegistry(),
    )
    port = gateway_app.http_port(server)

    def health(scheme: str, context: ssl.SSLContext | None = None) -> Any:
        url = f"{scheme}://localhost:{port}/healthz"
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())

    def client(ca: str, cert: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=pki / f"{ca}.crt")
        if cert is not None:
            context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
        return context

    refused = (OSError, http.client.HTTPException)
    try:
        answer = (200, {"status": "SERVING"})
        assert await asyncio.to_thread(health, "https", client("ca", "client")) == answer
        with pytest.raises(refused):  # the client does not trust the server's CA
            await asyncio.to_thread(health, "https", client("other-ca", "client"))
        with pytest.raises(refused):  # no plaintext beside TLS
            await asyncio.to_thread(health, "http")
        if mutual:
            for stranger in (client("ca"), client("ca", "stranger")):
                with pytest.raises(refused):  # no client certificate, or one of another CA
                    await asyncio.to_thread(health, "https", stranger)
        else:
            assert await asyncio.to_thread(health, "https", client("ca")) == answer
    finally:
        await server.stop(0)


async def test_without_monitoring_records_are_dropped_and_counted(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    suite = await build_suite(start_service, connect, tmp_path, monitoring=False)
    for user in USERS[:3]:
        await suite.gateway.stub.Predict(predict_request(user, 20.0), timeout=10)
    dropped = suite.gateway_server.registry.get_sample_value(
        "mlbackend_gateway_prediction_records_dropped_total", {"reason": "not_configured"}
    )
    assert dropped == 3


async def test_load_is_shed_with_resource_exhausted(tmp_path: Path) -> None:
    server = await gateway_app.create_server(
        loopback_settings(tmp_path / "gateway", http_port=None),
        registry=CollectorRegistry(),
        options=gateway_app.GatewayOptions(pipeline=PipelineLimits(max_in_flight=0)),
    )
    client = GatewayClient.connect(server.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.Predict(predict_request("u1", 20.0), timeout=10)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await client.close()
        await server.stop(0)


async def test_cli_predict(suite: Suite, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from mlbackend_cli import predict_cmd

    parser = argparse.ArgumentParser()
    predict_cmd.add_parser(parser.add_subparsers(dest="command"))
    base = ["predict", MODEL, "--gateway", suite.gateway_server.address]
    args = parser.parse_args(
        [*base, "--entity", "user_id=u7", "--feature", "tx_amount=80", "--json"]
    )
    assert await asyncio.to_thread(predict_cmd.run, args) == 0
    answer = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(
        answer["result"]["prediction"]["probabilities"], expected(suite, 1, "u7", 80.0), rtol=1e-9
    )
    args = parser.parse_args([*base, "--entity", "user_id=u7", "--feature", "tx_amount=80"])
    assert await asyncio.to_thread(predict_cmd.run, args) == 0
    assert "fraud version 1" in capsys.readouterr().out
    args = parser.parse_args([*base, "--entity", "user_id=nobody", "--feature", "tx_amount=1"])
    assert await asyncio.to_thread(predict_cmd.run, args) == 1
    assert "FAILED_PRECONDITION" in capsys.readouterr().err
    args = parser.parse_args([*base, "--feature", "tx_amount:int=x"])
    assert await asyncio.to_thread(predict_cmd.run, args) == 2
