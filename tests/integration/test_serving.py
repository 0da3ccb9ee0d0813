"""The serving service over real gRPC: its own API and the Open Inference Protocol v2,
on models trained here and served from a model directory (simple mode)."""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import Ridge
from sweeps import sweep, sweep_streamed

from mlbackend.common.v1 import common_pb2
from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend.serving.v1 import serving_pb2
from mlbackend_clients.inference import InferenceClient
from mlbackend_clients.serving import ServingClient
from mlbackend_runtime.server import RunningServer
from mlbackend_serving import app
from mlbackend_serving.core.model_dir import write_model_version

from conftest import Connect, StartService, loopback_settings

FEATURES = [f"f{i}" for i in range(10)]
X, Y = make_classification(n_samples=400, n_features=10, random_state=1)
X_OTHER, Y_OTHER = make_classification(n_samples=400, n_features=10, random_state=7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    example = X[:2].tolist()
    hgb = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, Y)
    write_model_version(root, "fraud", 1, hgb, FEATURES, input_example=example)
    rf = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
    write_model_version(root, "fraud", 2, rf.fit(X_OTHER, Y_OTHER), FEATURES,
                        input_example=example, decision_threshold=0.3)  # fmt: skip
    xr, yr = make_regression(n_samples=100, n_features=10, random_state=0)
    write_model_version(root, "price", 1, Ridge().fit(xr, yr), FEATURES, input_example=example)
    write_model_version(root, "batched", 1, hgb, FEATURES, input_example=example,
                        batching={"max_batch_size": 64, "max_wait_ms": 2})  # fmt: skip
    return root


@pytest.fixture(params=["threads", "asyncio"])
async def server(
    request: pytest.FixtureRequest, start_service: StartService, model_dir: Path, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    """Every test runs on both fronts: the default thread pool and ``grpc.aio``."""
    if request.param == "threads":
        yield await start_service("serving", model_dir=model_dir)
        return
    settings = loopback_settings(tmp_path / "asyncio", model_dir=model_dir)
    running = await app.create_server(settings, registry=CollectorRegistry(), front="asyncio")
    yield running
    await running.stop(0)


@pytest.fixture
def serving(server: RunningServer, connect: Connect) -> ServingClient:
    client = connect("serving", server)
    assert isinstance(client, ServingClient)
    return client


@pytest.fixture
def inference(server: RunningServer) -> Any:
    return InferenceClient.connect(server.address)


def _hgb() -> Any:
    return HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, Y)


def _vectors(rows: Any) -> list[common_pb2.FeatureVector]:
    return [
        common_pb2.FeatureVector(values=[common_pb2.Value(double_value=v) for v in row])
        for row in rows
    ]


def _violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


async def _fails(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


# --- own API ------------------------------------------------------------------------------


async def test_predict_returns_real_probabilities(serving: ServingClient) -> None:
    rows = X[10:15]
    response = await serving.stub.Predict(
        serving_pb2.PredictRequest(
            model="fraud", version=common_pb2.VersionSelector(version=1), vectors=_vectors(rows)
        )
    )
    expected = _hgb().predict_proba(rows)
    assert response.model == "fraud" and response.version == 1
    assert [c.int64_value for c in response.output.classes] == [0, 1]
    got = np.array([p.probabilities for p in response.predictions])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    for p, proba in zip(response.predictions, expected, strict=True):
        assert p.label.int64_value == int(proba.argmax())
        assert p.confidence == pytest.approx(proba.max())


async def test_predictions_over_one_stream_answer_as_predict_does(serving: ServingClient) -> None:
    """StreamPredict: each message is a Predict, answered in order exactly as Predict
    answers it; the first refused one ends the stream with Predict's status and
    details."""
    requests = [
        serving_pb2.PredictRequest(
            model="fraud", version=common_pb2.VersionSelector(version=v), vectors=_vectors(rows)
        )
        for v, rows in ((1, X[:1]), (2, X[3:7]), (1, X[20:52]))
    ]
    call = serving.stub.StreamPredict()
    for i, request in enumerate(requests):
        await call.write(serving_pb2.StreamPredictRequest(request=request, request_id=f"p-{i}"))
        answer = await call.read()
        assert answer.response == await serving.stub.Predict(request)
    bad = serving_pb2.PredictRequest(model="fraud", vectors=_vectors(X[:2, :3]))
    unary = await _fails(serving.stub.Predict(bad))
    await call.write(serving_pb2.StreamPredictRequest(request=bad))
    streamed = await _fails(call.read())
    assert streamed.code() == unary.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(streamed) == _violations(unary) != {}
    # The server stays up: a new stream answers.
    again = serving.stub.StreamPredict()
    await again.write(serving_pb2.StreamPredictRequest(request=requests[0]))
    assert len((await again.read()).response.predictions) == 1
    await again.done_writing()
    assert await again.read() is grpc.aio.EOF


async def test_default_version_is_latest_and_applies_its_threshold(
    serving: ServingClient,
) -> None:
    rows = X[:50]
    rf = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0)
    proba = rf.fit(X_OTHER, Y_OTHER).predict_proba(rows)
    named = [
        common_pb2.FeatureMap(
            values={n: common_pb2.Value(double_value=v) for n, v in zip(FEATURES, r, strict=True)}
        )
        for r in rows
    ]
    response = await serving.stub.Predict(serving_pb2.PredictRequest(model="fraud", rows=named))
    assert response.version == 2
    assert response.output.decision_threshold == pytest.approx(0.3)
    labels = [p.label.int64_value for p in response.predictions]
    assert labels == (proba[:, 1] >= 0.3).astype(int).tolist()
    assert all(p.decision_threshold == pytest.approx(0.3) for p in response.predictions)


async def test_regressor_returns_values(serving: ServingClient) -> None:
    response = await serving.stub.Predict(
        serving_pb2.PredictRequest(model="price", vectors=_vectors(X[:3]))
    )
    assert len(response.predictions) == 3
    assert all(p.HasField("value") for p in response.predictions)


async def test_list_metadata_health(serving: ServingClient) -> None:
    listed = await serving.stub.ListModels(serving_pb2.ListModelsRequest(page_size=2))
    assert [(m.model, m.version) for m in listed.models] == [("batched", 1), ("fraud", 1)]
    assert all(m.state == serving_pb2.MODEL_STATE_READY for m in listed.models)
    rest = await serving.stub.ListModels(
        serving_pb2.ListModelsRequest(page_size=10, page_token=listed.next_page_token)
    )
    assert [(m.model, m.version) for m in rest.models] == [("fraud", 2), ("price", 1)]
    assert not rest.next_page_token

    meta = await serving.stub.GetModelMetadata(serving_pb2.GetModelMetadataRequest(model="fraud"))
    assert meta.served_model.version == 2
    assert [f.name for f in meta.model_version.signature.features] == FEATURES
    assert len(meta.served_model.artifact_sha256) == 64

    await serving.stub.Predict(serving_pb2.PredictRequest(model="price", vectors=_vectors(X[:1])))
    short = serving_pb2.PredictRequest(model="price", vectors=_vectors(X[:1, :3]))
    await _fails(serving.stub.Predict(short))
    health = await serving.stub.GetModelHealth(serving_pb2.GetModelHealthRequest(model="price"))
    (entry,) = health.health
    assert entry.request_count == 2 and entry.error_count == 1
    assert entry.error_rate == pytest.approx(0.5)
    assert entry.verdict == common_pb2.HEALTH_VERDICT_UNHEALTHY
    assert entry.latency.p99.ToTimedelta().total_seconds() > 0
    assert entry.last_request_time.seconds > 0
    past_any_clock = duration_pb2.Duration(seconds=2**62)
    error = await _fails(serving.stub.GetModelHealth(
        serving_pb2.GetModelHealthRequest(model="price", window=past_any_clock)))  # fmt: skip
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "window" in _violations(error)


async def test_unload_and_load_again(serving: ServingClient) -> None:
    unloaded = await serving.stub.UnloadModel(serving_pb2.UnloadModelRequest(model="price"))
    assert [m.version for m in unloaded.unloaded] == [1]
    error = await _fails(
        serving.stub.Predict(serving_pb2.PredictRequest(model="price", vectors=_vectors(X[:1])))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    loaded = await serving.stub.LoadModel(serving_pb2.LoadModelRequest(model="price"))
    assert loaded.served_model.state == serving_pb2.MODEL_STATE_READY


# --- bad input --------------------------------------------------------------------------


async def test_bad_input_gets_clear_errors_and_the_server_stays_up(
    serving: ServingClient, inference: InferenceClient
) -> None:
    error = await _fails(
        serving.stub.Predict(serving_pb2.PredictRequest(model="nope", vectors=_vectors(X[:1])))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND

    error = await _fails(serving.stub.Predict(
        serving_pb2.PredictRequest(model="fraud", vectors=_vectors(X[:2, :3]))))  # fmt: skip
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "3 values where the signature has 10" in _violations(error)["vectors[0].values"]

    wrong_type = _vectors(X[:3])
    wrong_type[2].values[4].CopyFrom(common_pb2.Value(string_value="high"))
    error = await _fails(
        serving.stub.Predict(serving_pb2.PredictRequest(model="fraud", vectors=wrong_type))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _violations(error) == {"vectors[2].values[4]": "f4: expected double, got str"}

    rows = [
        common_pb2.FeatureMap(values={n: common_pb2.Value(double_value=1.0) for n in FEATURES})
        for _ in range(3)
    ]
    rows[2].values["amount"].double_value = 3.0
    del rows[1].values["f0"]
    rows[0].values["f9"].double_value = float("nan")
    error = await _fails(serving.stub.Predict(serving_pb2.PredictRequest(model="fraud", rows=rows)))
    assert _violations(error) == {
        "rows[1].f0": "missing",
        "rows[2].amount": "not a feature of the model's signature",
    }
    del rows[2].values["amount"]
    rows[1].values["f0"].double_value = 0.0
    error = await _fails(serving.stub.Predict(serving_pb2.PredictRequest(model="fraud", rows=rows)))
    assert _violations(error) == {"rows[0].f9": "NaN (missing) is not allowed for this feature"}

    # OIP: NaN, 3 features where 10 are expected, BYTES for a numeric model, wrong dtype.
    matrix = X[:2].astype(np.float32)
    matrix[1, 3] = np.nan
    error = await _fails(inference.stub.ModelInfer(_infer("fraud", matrix)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rows[1].f3" in _violations(error)
    error = await _fails(inference.stub.ModelInfer(_infer("fraud", X[:2, :3])))
    assert "inputs[0].shape" in _violations(error)
    strings = oip.ModelInferRequest(model_name="fraud")
    strings.inputs.add(
        name="input", datatype="BYTES", shape=[1, 10]
    ).contents.bytes_contents.extend([b"x"] * 10)
    error = await _fails(inference.stub.ModelInfer(strings))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BYTES is not accepted" in _violations(error)["inputs[0].datatype"]
    wrong = _infer("fraud", X[:2])
    wrong.inputs[0].datatype = "FP32"  # 8-byte elements declared as 4-byte ones
    error = await _fails(inference.stub.ModelInfer(wrong))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    huge = _infer("fraud", np.zeros((50 * 1024 * 1024 // 80 + 1, 10)))
    error = await _fails(inference.stub.ModelInfer(huge))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    many = _infer("fraud", np.zeros((100_000, 10), dtype=np.float32))  # 4 MB, too many rows
    error = await _fails(inference.stub.ModelInfer(many))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 65536 per request" in _violations(error)["rows"]

    assert (await inference.stub.ServerLive(oip.ServerLiveRequest())).live
    ok = await inference.stub.ModelInfer(_infer("fraud", X[:1]))
    assert ok.model_version == "2"
    await inference.close()


def _request_seeds() -> dict[str, tuple[Any, list[Any]]]:
    """Valid requests of every shape each method takes, by method path, with the
    response type that parses its answers."""
    infer = [
        _infer("fraud", X[:1].astype(np.float32)),  # the C parser's usual request
        _infer("fraud", X[:3], version="1", raw=False),
        _infer("price", X[:2].astype(np.float32), raw=False),
    ]
    per_feature = oip.ModelInferRequest(model_name="fraud", model_version="2")
    for j, name in enumerate(FEATURES):
        per_feature.inputs.add(name=name, datatype="FP64", shape=[2]).contents.fp64_contents.extend(
            X[:2, j].tolist()
        )
    per_feature.outputs.add(name="label")
    infer.append(per_feature)
    named = serving_pb2.PredictRequest(model="fraud")
    named.rows.add(values={n: common_pb2.Value(double_value=1.5) for n in FEATURES})
    predict = [serving_pb2.PredictRequest(model="fraud", vectors=_vectors(X[:2])), named]
    return {
        "/inference.GRPCInferenceService/ModelInfer": (oip.ModelInferResponse, infer),
        "/mlbackend.serving.v1.ModelServingService/Predict": (serving_pb2.PredictResponse, predict),
    }


async def test_mangled_requests_get_the_callers_fault_codes_and_lose_nothing(
    server: RunningServer, inference: InferenceClient
) -> None:
    """Valid requests with bytes flipped, cut, inserted or repeated, or with fields set
    to edge values, cleared, added or removed (seeded, 800 a method) get an answer or a
    status that is the caller's fault, an INVALID_ARGUMENT always naming the field; the
    server then still answers as scikit-learn does."""
    rng = random.Random(int(os.environ.get("MLBACKEND_TEST_SEED", "20261208")))
    count = int(os.environ.get("MLBACKEND_TEST_MANGLED", "800"))
    async with grpc.aio.insecure_channel(server.address) as channel:
        for path, (response_type, seeds) in _request_seeds().items():
            codes = await sweep(channel, path, response_type, seeds, count, rng)
            # The bad requests reached both sides of the checks.
            assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes, (path, codes)
    rows = X[200:204].astype(np.float32)
    response = await inference.stub.ModelInfer(_infer("fraud", rows, version="1"))
    proba = np.frombuffer(response.raw_output_contents[1], dtype="<f8").reshape(4, 2)
    np.testing.assert_allclose(proba, _hgb().predict_proba(rows), rtol=0, atol=1e-12)
    await inference.close()


async def test_bad_messages_on_a_prediction_stream_get_the_callers_fault_codes(
    server: RunningServer, inference: InferenceClient
) -> None:
    """StreamPredict calls of 1-3 valid Predict messages, one of them mangled or with
    fields changed (and now and then one dropped or repeated; seeded, 300 calls): each
    message answered parses, and a call that fails gets a status that is the caller's
    fault; the server then still answers as scikit-learn does."""
    rng = random.Random(int(os.environ.get("MLBACKEND_TEST_SEED", "20261208")))
    count = int(os.environ.get("MLBACKEND_TEST_MANGLED", "300"))
    _, predicts = _request_seeds()["/mlbackend.serving.v1.ModelServingService/Predict"]
    messages = [
        serving_pb2.StreamPredictRequest(request=p, request_id=f"{i:032x}")
        for i, p in enumerate(predicts, start=1)
    ]
    calls = [messages[:1], messages, messages[::-1]]
    async with grpc.aio.insecure_channel(server.address) as channel:
        codes = await sweep_streamed(
            channel,
            "/mlbackend.serving.v1.ModelServingService/StreamPredict",
            serving_pb2.StreamPredictResponse,
            calls,
            count,
            rng,
            request_streaming=True,
            response_streaming=True,
            # A message's own timeout may say its deadline has passed.
            also=frozenset({grpc.StatusCode.DEADLINE_EXCEEDED}),
        )
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes, codes
    rows = X[200:204].astype(np.float32)
    response = await inference.stub.ModelInfer(_infer("fraud", rows, version="1"))
    proba = np.frombuffer(response.raw_output_contents[1], dtype="<f8").reshape(4, 2)
    np.testing.assert_allclose(proba, _hgb().predict_proba(rows), rtol=0, atol=1e-12)
    await inference.close()


# --- Open Inference Protocol v2 -----------------------------------------------------------


def _infer(model: str, rows: Any, version: str = "", raw: bool = True) -> oip.ModelInferRequest:
    rows = np.asarray(rows)
    datatype = {np.dtype("float32"): "FP32", np.dtype("float64"): "FP64"}[rows.dtype]
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    tensor = request.inputs.add(name="input", datatype=datatype, shape=list(rows.shape))
    if raw:
        request.raw_input_contents.append(rows.astype(rows.dtype.newbyteorder("<")).tobytes())
    elif datatype == "FP32":
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    else:
        tensor.contents.fp64_contents.extend(rows.ravel().tolist())
    return request


async def test_oip_metadata_and_readiness(inference: InferenceClient) -> None:
    stub = inference.stub
    assert (await stub.ServerReady(oip.ServerReadyRequest())).ready
    assert (await stub.ModelReady(oip.ModelReadyRequest(name="fraud", version="1"))).ready
    assert not (await stub.ModelReady(oip.ModelReadyRequest(name="fraud", version="9"))).ready
    server = await stub.ServerMetadata(oip.ServerMetadataRequest())
    assert server.name == "mlbackend" and "model_repository" in server.extensions
    meta = await stub.ModelMetadata(oip.ModelMetadataRequest(name="fraud"))
    assert meta.versions == ["1", "2"]
    assert [(i.name, list(i.shape)) for i in meta.inputs] == [("input", [-1, 10])]
    assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP64", [-1, 2]),
    ]
    index = await stub.RepositoryIndex(oip.RepositoryIndexRequest())
    assert {(m.name, m.version, m.state) for m in index.models} >= {("fraud", "1", "READY")}
    await stub.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="price"))
    index = await stub.RepositoryIndex(oip.RepositoryIndexRequest())
    assert ("price", "1", "UNAVAILABLE") in {(m.name, m.version, m.state) for m in index.models}
    assert (await stub.ServerReady(oip.ServerReadyRequest())).ready
    await stub.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="price"))
    assert (await stub.ModelReady(oip.ModelReadyRequest(name="price"))).ready
    await inference.close()


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
async def test_oip_infer_matches_sklearn(inference: InferenceClient, raw: bool, dtype: Any) -> None:
    rows = X[100:108].astype(dtype)
    response = await inference.stub.ModelInfer(_infer("fraud", rows, version="1", raw=raw))
    assert response.model_version == "1"
    names = [o.name for o in response.outputs]
    assert names == ["label", "probabilities"]
    if raw:
        labels = np.frombuffer(response.raw_output_contents[0], dtype="<i8")
        proba = np.frombuffer(response.raw_output_contents[1], dtype="<f8").reshape(8, 2)
    else:
        labels = np.array(response.outputs[0].contents.int64_contents)
        proba = np.array(response.outputs[1].contents.fp64_contents).reshape(8, 2)
    expected = _hgb().predict_proba(rows)
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-12)
    assert labels.tolist() == expected.argmax(axis=1).tolist()
    await inference.close()


async def test_oip_one_input_per_feature(inference: InferenceClient) -> None:
    rows = X[:4]
    request = oip.ModelInferRequest(model_name="fraud", model_version="1")
    for j, name in enumerate(reversed(FEATURES)):
        column = rows[:, len(FEATURES) - 1 - j]
        request.inputs.add(name=name, datatype="FP64", shape=[4]).contents.fp64_contents.extend(
            column.tolist()
        )
    request.outputs.add(name="probabilities")
    response = await inference.stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == ["probabilities"]
    proba = np.array(response.outputs[0].contents.fp64_contents).reshape(4, 2)
    np.testing.assert_allclose(proba, _hgb().predict_proba(rows), rtol=0, atol=1e-12)
    await inference.close()


async def test_concurrent_requests_coalesce_into_batches(
    server: RunningServer, inference: InferenceClient
) -> None:
    requests = [_infer("batched", X[i : i + 1]) for i in range(64)]
    responses = await asyncio.gather(*(inference.stub.ModelInfer(r) for r in requests))
    expected = _hgb().predict_proba(X[:64])
    for i, response in enumerate(responses):
        proba = np.frombuffer(response.raw_output_contents[1], dtype="<f8")
        np.testing.assert_allclose(proba, expected[i], rtol=0, atol=1e-12)
    text = await asyncio.to_thread(_scrape, server.metrics.url)
    count = _metric(text, 'mlbackend_model_batch_size_count{model="batched",version="1"}')
    rows = _metric(text, 'mlbackend_model_batch_size_sum{model="batched",version="1"}')
    assert rows == 64
    assert count < 64 / 2, count  # far fewer model calls than requests
    assert _metric(text, 'mlbackend_model_requests_total{model="batched",version="1"}') == 64
    assert 'mlbackend_model_queue_seconds_bucket{le="0.0001",model="batched"' in text
    await inference.close()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


async def test_a_stopping_server_ends_the_prediction_streams_callers_keep_open(
    start_service: StartService, connect: Connect, model_dir: Path
) -> None:
    server = await start_service("serving", model_dir=model_dir)
    client = connect("serving", server)
    request = serving_pb2.StreamPredictRequest(
        request=serving_pb2.PredictRequest(model="fraud", vectors=_vectors(X[:1]))
    )
    call = client.stub.StreamPredict()
    await call.write(request)
    assert len((await call.read()).response.predictions) == 1
    started = time.monotonic()
    await server.stop(10)
    assert time.monotonic() - started < 3
    # Cancelled while idle, or ended (OK) just after its answer.
    assert await call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.OK)
