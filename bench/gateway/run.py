"""Gateway benchmark: end-to-end p50/p99 and rps against the sum of its direct calls.

Starts registry, feature store, serving (following the registry), monitoring and the
gateway (with its JSON/HTTP front) as separate ``mlbackend serve`` processes on
loopback; defines a feature view of 10 stored double features per user and a feature
service over them; writes the rows of 1,000 users; trains a HistGradientBoosting
classifier on fraud-like synthetic data with those 10 inputs, registers it with the
feature service and signature and moves ``production`` to it; waits until serving has
it READY. Then a separate load-generator process (``run.py --role loadgen``, grpc.aio,
closed loop, N workers, bounded by count and time) measures, at concurrency 1, 8, 32:

- ``gateway-grpc``: ``InferenceGatewayService.Predict`` (entity key only);
- ``gateway-stream``: the same Predict as messages of ``StreamPredict``, one stream per
  worker kept open (for callers that predict all the time);
- ``gateway-http``: ``POST /v1/models/{model}:predict`` over HTTP/1.1 keep-alive (one
  connection per worker, a small asyncio client);
- ``direct-sum``: per request, ``GetOnlineFeatures`` of the same entity through the same
  feature service, then serving ``Predict`` with those values, one after the other in
  the same loop; the request's latency is their sum (the baseline: the gateway's work
  minus its own overhead).
- ``direct-stream``: the same two calls as messages of ``StreamOnlineFeatures`` and
  ``StreamPredict``, on two streams each worker keeps open: what the gateway itself
  sends upstream, so gateway / direct-stream is its overhead over the cheapest way to
  make its calls directly.
- ``passthrough``: a bare grpc.aio server (started by this script) that makes the
  direct-sum's two unary calls behind one hop and does nothing else: what one Python
  gRPC hop costs when it calls its dependencies as unary calls.
- ``passthrough-stream``: the same bare grpc.aio server making the two calls as messages
  of streams it keeps open (one pair per call in progress), as our gateway does: the
  floor of a Python gRPC front whose calls go upstream on streams; gateway-grpc /
  passthrough-stream is what our gateway's own work costs on top of it.
- ``passthrough-sync``: the same floor on gRPC's synchronous stack (a thread-pool
  server whose handlers make blocking calls).

The eight kinds (``--kinds`` picks some) run back to back for each concurrency
(interleaved, so drift in the shared CPU hits all of them), after one warm-up each.
Reported next to each: the load generator's CPU and the services' CPU per request
(from /proc, over the measurement).

    .venv/bin/python bench/gateway/run.py            # full: ~6 minutes
    .venv/bin/python bench/gateway/run.py --quick    # ~1.5 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend.features.v1 import features_pb2_grpc
from mlbackend.gateway.v1 import gateway_pb2 as g
from mlbackend.gateway.v1 import gateway_pb2_grpc
from mlbackend.registry.v1 import registry_pb2 as r
from mlbackend.serving.v1 import serving_pb2 as s
from mlbackend.serving.v1 import serving_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchkit  # bench/benchkit.py: the py-spy locator

MODEL = "fraud_bench"
VIEW = "user_stats"
FEATURE_SERVICE = "fraud_bench_fs"
STORED = (
    "amount_mean", "amount_std", "txn_count_1h", "txn_count_24h", "txn_count_7d",
    "amount_sum_1h", "amount_sum_24h", "amount_sum_7d", "account_age_days", "category_risk",
)  # fmt: skip
SIGNATURE = [f"{VIEW}:{name}" for name in STORED]
USERS = 1000
SERVICES = ("registry", "features", "monitoring", "serving", "gateway")
KINDS = ("direct-sum", "direct-stream", "passthrough", "passthrough-stream", "passthrough-sync",
         "gateway-grpc", "gateway-stream", "gateway-http")  # fmt: skip
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE_FLAGS = os.environ.get("BENCH_PYSPY_FLAGS", "--threads --gil --nonblocking").split()


def user_id(i: int) -> str:
    return f"u{i:05d}"


def entity_key(i: int) -> c.EntityKey:
    return c.EntityKey(join_keys={"user_id": c.Value(string_value=user_id(i))})


# ---------------------------------------------------------------- processes


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    info: dict[str, Any]

    @property
    def address(self) -> str:
        return str(self.info["address"])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def start(name: str, workdir: Path, *extra: str) -> Service:
    ready = workdir / f"{name}.ready.json"
    log = (workdir / f"{name}.log").open("wb")
    command = [sys.executable, "-m", "mlbackend_cli", "serve", name, "--host", "127.0.0.1",
               "--port", "0", "--metrics-port", "0", "--data-dir", str(workdir / name),
               "--ready-file", str(ready), "--grace-seconds", "2", "--log-level", "WARNING",
               *extra]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log.name}")
        if ready.exists():
            return Service(name, process, json.loads(ready.read_text()))
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{name} did not become ready in 60 s")


def stop(services: list[Service]) -> None:
    for service in reversed(services):
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    for service in services:
        try:
            service.process.wait(10)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(5)


# ---------------------------------------------------------------- data and model


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
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
                name=VIEW,
                entities=["user"],
                features=[f.Feature(name=n, dtype=c.DATA_TYPE_DOUBLE) for n in STORED],
            )
        ],
        feature_services=[
            f.FeatureService(name=FEATURE_SERVICE, feature_refs=SIGNATURE, outputs=SIGNATURE)
        ],
    )


def synthetic(
    rng: np.random.Generator, n: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Fraud-like rows: amounts, counts and sums per window, account age, category risk."""
    mean = rng.lognormal(3.5, 0.8, n)
    std = mean * rng.uniform(0.1, 1.0, n)
    c1, c24, c7 = rng.poisson(0.5, n), rng.poisson(4, n), rng.poisson(25, n)
    s1, s24, s7 = c1 * mean, c24 * mean, c7 * mean
    age = rng.exponential(400, n)
    risk = rng.uniform(0, 0.2, n)
    x = np.column_stack([mean, std, c1, c24, c7, s1, s24, s7, age, risk]).astype(float)
    score = 1.2 * c1 + 0.02 * (s24 / (mean + 1)) - age / 300 + 10 * risk + rng.normal(0, 1, n)
    return x, (score > np.quantile(score, 0.95)).astype(int)


async def setup(addresses: dict[str, str], rng: np.random.Generator) -> tuple[int, str]:
    """Definitions, rows, model registered and promoted; returns (version, feature service)."""
    import skops.io as sio
    from sklearn.ensemble import HistGradientBoostingClassifier

    from mlbackend_clients.features import FeatureStoreClient
    from mlbackend_clients.registry import RegistryClient

    features = FeatureStoreClient.connect(addresses["features"])
    registry = RegistryClient.connect(addresses["registry"])
    async with features, registry:
        applied = await features.stub.ApplyDefinitions(definitions(), timeout=30)
        change = next(ch for ch in applied.changes if ch.kind == "feature_service")
        service_ref = f"{change.name}@{change.revision}"
        rows, _ = synthetic(rng, USERS)
        when = _ts(datetime.now(UTC) - timedelta(minutes=1))
        await features.stub.WriteFeatures(
            f.WriteFeaturesRequest(
                batch=f.FeatureBatch(
                    feature_view=VIEW,
                    features=list(STORED),
                    rows=[
                        f.FeatureRow(
                            entity_key=entity_key(i),
                            event_time=when,
                            values=[c.Value(double_value=float(v)) for v in rows[i]],
                        )
                        for i in range(USERS)
                    ],
                )
            ),
            timeout=60,
        )
        x, y = synthetic(rng, 20_000)
        model = HistGradientBoostingClassifier(random_state=0).fit(x, y)
        spec = r.ModelVersion(
            artifact=r.Artifact(format=c.ARTIFACT_FORMAT_SKOPS),
            signature=c.InputSignature(
                features=[c.FeatureSpec(name=n, dtype=c.DATA_TYPE_DOUBLE) for n in SIGNATURE]
            ),
            output=c.OutputSpec(
                kind=c.OUTPUT_KIND_CLASSIFIER,
                classes=[c.Value(int64_value=0), c.Value(int64_value=1)],
            ),
            feature_service=service_ref,
            input_example=[
                c.FeatureMap(
                    values={
                        n: c.Value(double_value=float(v))
                        for n, v in zip(SIGNATURE, x[0], strict=True)
                    }
                )
            ],
        )
        version = await registry.upload_version(
            f"models/{MODEL}", sio.dumps(model), spec, create_registered_model=True, timeout=60
        )
        await registry.stub.SetAlias(
            r.SetAliasRequest(
                parent=f"models/{MODEL}", alias="production", version=version.version
            ),
            timeout=10,
        )
    return version.version, service_ref


async def wait_served(address: str, version: int, timeout: float = 90) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = serving_pb2_grpc.ModelServingServiceStub(channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = await stub.ListModels(s.ListModelsRequest(), timeout=5)
            if any(
                m.model == MODEL and m.version == version and m.state == s.MODEL_STATE_READY
                for m in listed.models
            ):
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"serving did not load {MODEL}@{version} in {timeout:.0f} s")


# ---------------------------------------------------------------- load generator


@dataclass(frozen=True)
class LoadConfig:
    kind: str
    concurrency: int
    seconds: float
    max_requests: int
    warmup_seconds: float
    gateway: str
    http_port: int
    features: str
    serving: str
    feature_service: str
    version: int
    passthrough: str
    passthrough_stream: str
    passthrough_sync: str


Call = Callable[[int, "_Http | None"], Awaitable[tuple[float, float, float]]]


class _Http:
    """One HTTP/1.1 keep-alive connection: POST a JSON body, read status and body."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        assert self._reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode()
        self._writer.write(head + body)
        status_line = await self._reader.readline()
        length = 0
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self._reader.readexactly(length)
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _GatewayStream:
    """A worker's open StreamPredict to the gateway (gateway-stream)."""

    def __init__(self, gateway: gateway_pb2_grpc.InferenceGatewayServiceStub) -> None:
        self._call = gateway.StreamPredict()

    async def predict(self, request: g.PredictRequest) -> g.PredictResponse:
        await self._call.write(g.StreamPredictRequest(request=request))
        answer = await asyncio.wait_for(self._call.read(), 5)
        return answer.response

    def close(self) -> None:
        self._call.cancel()


class _Streams:
    """A worker's two open streams (direct-stream): one message at a time on each."""

    def __init__(
        self,
        features: features_pb2_grpc.FeatureStoreServiceStub,
        serving: serving_pb2_grpc.ModelServingServiceStub,
    ) -> None:
        self._reads = features.StreamOnlineFeatures()
        self._predictions = serving.StreamPredict()

    async def read(self, request: f.GetOnlineFeaturesRequest) -> f.GetOnlineFeaturesResponse:
        await self._reads.write(f.StreamOnlineFeaturesRequest(read=request))
        answer = await asyncio.wait_for(self._reads.read(), 5)
        return answer.read

    async def predict(self, request: s.PredictRequest) -> s.PredictResponse:
        await self._predictions.write(s.StreamPredictRequest(request=request))
        answer = await asyncio.wait_for(self._predictions.read(), 5)
        return answer.response

    def close(self) -> None:
        self._reads.cancel()
        self._predictions.cancel()


async def loadgen(config: LoadConfig, started_marker: Path | None = None) -> dict[str, Any]:
    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    gateway_channel = grpc.aio.insecure_channel(config.gateway, options=options)
    features_channel = grpc.aio.insecure_channel(config.features, options=options)
    serving_channel = grpc.aio.insecure_channel(config.serving, options=options)
    gateway = gateway_pb2_grpc.InferenceGatewayServiceStub(gateway_channel)
    passthrough_channel = grpc.aio.insecure_channel(config.passthrough, options=options)
    passthrough = gateway_pb2_grpc.InferenceGatewayServiceStub(passthrough_channel)
    stream_hop_channel = grpc.aio.insecure_channel(config.passthrough_stream, options=options)
    passthrough_stream = gateway_pb2_grpc.InferenceGatewayServiceStub(stream_hop_channel)
    sync_channel = grpc.aio.insecure_channel(config.passthrough_sync, options=options)
    passthrough_sync = gateway_pb2_grpc.InferenceGatewayServiceStub(sync_channel)
    features = features_pb2_grpc.FeatureStoreServiceStub(features_channel)
    serving = serving_pb2_grpc.ModelServingServiceStub(serving_channel)
    version = c.VersionSelector(version=config.version)
    path = f"/v1/models/{MODEL}:predict"

    async def direct(i: int, _conn: _Http | None) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        read = await features.GetOnlineFeatures(
            f.GetOnlineFeaturesRequest(
                feature_service=config.feature_service, entity_keys=[entity_key(i)]
            ),
            timeout=5,
        )
        t1 = time.perf_counter()
        values = [v.value for v in read.rows[0].values]
        answer = await serving.Predict(
            s.PredictRequest(
                model=MODEL, version=version, vectors=[c.FeatureVector(values=values)]
            ),
            timeout=5,
        )
        t2 = time.perf_counter()
        assert len(answer.predictions[0].probabilities) == 2
        return t2 - t0, t1 - t0, t2 - t1

    async def direct_stream(i: int, streams: Any) -> tuple[float, float, float]:
        assert isinstance(streams, _Streams)
        t0 = time.perf_counter()
        read = await streams.read(
            f.GetOnlineFeaturesRequest(
                feature_service=config.feature_service, entity_keys=[entity_key(i)]
            )
        )
        t1 = time.perf_counter()
        values = [v.value for v in read.rows[0].values]
        answer = await streams.predict(
            s.PredictRequest(model=MODEL, version=version, vectors=[c.FeatureVector(values=values)])
        )
        t2 = time.perf_counter()
        assert len(answer.predictions[0].probabilities) == 2
        return t2 - t0, t1 - t0, t2 - t1

    def via(stub: gateway_pb2_grpc.InferenceGatewayServiceStub) -> Call:
        async def call(i: int, _conn: _Http | None) -> tuple[float, float, float]:
            t0 = time.perf_counter()
            answer = await stub.Predict(
                g.PredictRequest(model=MODEL, input=g.PredictionInput(entity_key=entity_key(i))),
                timeout=5,
            )
            elapsed = time.perf_counter() - t0
            assert len(answer.result.prediction.probabilities) == 2
            return elapsed, 0.0, 0.0

        return call

    async def via_stream(i: int, stream: Any) -> tuple[float, float, float]:
        assert isinstance(stream, _GatewayStream)
        t0 = time.perf_counter()
        answer = await stream.predict(
            g.PredictRequest(model=MODEL, input=g.PredictionInput(entity_key=entity_key(i)))
        )
        elapsed = time.perf_counter() - t0
        assert len(answer.result.prediction.probabilities) == 2
        return elapsed, 0.0, 0.0

    bodies = [
        json.dumps(
            {"input": {"entityKey": {"joinKeys": {"user_id": {"stringValue": user_id(i)}}}}}
        ).encode()
        for i in range(USERS)
    ]

    async def via_http(i: int, conn: _Http | None) -> tuple[float, float, float]:
        assert conn is not None
        t0 = time.perf_counter()
        code, payload = await conn.post(path, bodies[i])
        elapsed = time.perf_counter() - t0
        if code != 200:
            raise RuntimeError(f"HTTP {code}: {payload[:200]!r}")
        return elapsed, 0.0, 0.0

    call = {"direct-sum": direct, "direct-stream": direct_stream, "passthrough": via(passthrough),
            "passthrough-stream": via(passthrough_stream),
            "passthrough-sync": via(passthrough_sync), "gateway-grpc": via(gateway),
            "gateway-stream": via_stream,
            "gateway-http": via_http}[config.kind]  # fmt: skip

    async def run(
        seconds: float, max_requests: int
    ) -> tuple[list[tuple[float, float, float]], int, float]:
        samples: list[tuple[float, float, float]] = []
        errors = 0
        issued = 0
        deadline = time.perf_counter() + seconds

        def connect() -> Any:
            if config.kind == "gateway-http":
                return _Http(config.http_port)
            if config.kind == "direct-stream":
                return _Streams(features, serving)
            if config.kind == "gateway-stream":
                return _GatewayStream(gateway)
            return None

        async def worker(w: int) -> None:
            nonlocal errors, issued
            conn = connect()
            i = w * 37
            try:
                while issued < max_requests and time.perf_counter() < deadline:
                    issued += 1
                    i = (i + 1) % USERS
                    try:
                        samples.append(await call(i, conn))
                    except Exception:  # counted, never fatal
                        errors += 1
                        if conn is not None:
                            conn.close()
                            conn = connect()
            finally:
                if conn is not None:
                    conn.close()

        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(worker(w) for w in range(config.concurrency))), seconds + 30
        )
        return samples, errors, time.perf_counter() - started

    await run(config.warmup_seconds, 100_000)
    if started_marker is not None:
        os.close(os.open(started_marker, os.O_CREAT | os.O_WRONLY))  # parent samples CPU
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    samples, errors, wall = await run(config.seconds, config.max_requests)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for channel in (
        gateway_channel,
        features_channel,
        serving_channel,
        passthrough_channel,
        stream_hop_channel,
        sync_channel,
    ):
        await channel.close()
    lat = np.array(samples) * 1000 if samples else np.zeros((1, 3))
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "kind": config.kind,
        "concurrency": config.concurrency,
        "requests": len(samples),
        "errors": errors,
        "wall": wall,
        "rps": len(samples) / wall,
        "p50": float(np.percentile(lat[:, 0], 50)),
        "p99": float(np.percentile(lat[:, 0], 99)),
        "fs_p50": float(np.percentile(lat[:, 1], 50)),
        "serving_p50": float(np.percentile(lat[:, 2], 50)),
        "client_cpu": client_cpu,
    }


# ---------------------------------------------------------------- the floor


class _Hop:
    """The messages of the two calls behind a passthrough hop, for either stack."""

    def __init__(self, feature_service: str, version: int):
        self._feature_service = feature_service
        self._version = c.VersionSelector(version=version)

    def read(self, request: g.PredictRequest) -> f.GetOnlineFeaturesRequest:
        return f.GetOnlineFeaturesRequest(
            feature_service=self._feature_service, entity_keys=[request.input.entity_key]
        )

    def score(
        self, request: g.PredictRequest, read: f.GetOnlineFeaturesResponse
    ) -> s.PredictRequest:
        values = [v.value for v in read.rows[0].values]
        return s.PredictRequest(
            model=request.model, version=self._version, vectors=[c.FeatureVector(values=values)]
        )

    @staticmethod
    def answer(request: g.PredictRequest, scored: s.PredictResponse) -> g.PredictResponse:
        return g.PredictResponse(
            result=g.PredictionResult(
                model=request.model, version=scored.version, prediction=scored.predictions[0]
            )
        )


class Passthrough(gateway_pb2_grpc.InferenceGatewayServiceServicer):
    """The least a Python gRPC gateway can do: the direct-sum's two calls behind one hop.

    No version resolution, checks, records, metrics or auth: what is left of the
    gateway's latency above this is the cost of what ours does on top.
    """

    def __init__(self, features: str, serving: str, feature_service: str, version: int):
        self._features = features_pb2_grpc.FeatureStoreServiceStub(
            grpc.aio.insecure_channel(features)
        )
        self._serving = serving_pb2_grpc.ModelServingServiceStub(grpc.aio.insecure_channel(serving))
        self._hop = _Hop(feature_service, version)

    async def Predict(self, request: g.PredictRequest, context: Any) -> g.PredictResponse:
        read = await self._features.GetOnlineFeatures(self._hop.read(request), timeout=5)
        scored = await self._serving.Predict(self._hop.score(request, read), timeout=5)
        return self._hop.answer(request, scored)


class StreamPassthrough(gateway_pb2_grpc.InferenceGatewayServiceServicer):
    """The same two calls behind one grpc.aio hop, as messages of open streams: a call
    takes an idle pair of streams (or opens one) and gives it back when answered. Pairs
    idle for a second are closed (``sweep``): a server keeps 32 streams per method, and
    the next point's load generator may need them (direct-stream holds one per worker)."""

    def __init__(self, features: str, serving: str, feature_service: str, version: int):
        self._features = features_pb2_grpc.FeatureStoreServiceStub(
            grpc.aio.insecure_channel(features)
        )
        self._serving = serving_pb2_grpc.ModelServingServiceStub(grpc.aio.insecure_channel(serving))
        self._hop = _Hop(feature_service, version)
        self._idle: list[tuple[_Streams, float]] = []

    async def Predict(self, request: g.PredictRequest, context: Any) -> g.PredictResponse:
        streams = self._idle.pop()[0] if self._idle else _Streams(self._features, self._serving)
        read = await streams.read(self._hop.read(request))
        scored = await streams.predict(self._hop.score(request, read))
        self._idle.append((streams, time.monotonic()))
        return self._hop.answer(request, scored)

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            stale = time.monotonic() - 1.0
            for streams, since in self._idle:
                if since < stale:
                    streams.close()
            self._idle = [(streams, since) for streams, since in self._idle if since >= stale]


class SyncPassthrough(gateway_pb2_grpc.InferenceGatewayServiceServicer):
    """The same two calls behind one hop of the synchronous stack: a thread-pool server
    whose handler threads make blocking calls on sync channels."""

    def __init__(self, features: str, serving: str, feature_service: str, version: int):
        self._features = features_pb2_grpc.FeatureStoreServiceStub(grpc.insecure_channel(features))
        self._serving = serving_pb2_grpc.ModelServingServiceStub(grpc.insecure_channel(serving))
        self._hop = _Hop(feature_service, version)

    def Predict(self, request: g.PredictRequest, context: Any) -> g.PredictResponse:
        read = self._features.GetOnlineFeatures(self._hop.read(request), timeout=5)
        scored = self._serving.Predict(self._hop.score(request, read), timeout=5)
        return self._hop.answer(request, scored)


def serve_passthrough_sync(config: dict[str, Any], ready: Path) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=int(config.get("threads", 16))))
    gateway_pb2_grpc.add_InferenceGatewayServiceServicer_to_server(
        SyncPassthrough(config["features"], config["serving"], config["feature_service"],
                        config["version"]),
        server,
    )  # fmt: skip
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.write_text(json.dumps({"address": f"127.0.0.1:{port}"}))
    server.wait_for_termination()


async def serve_passthrough(config: dict[str, Any], ready: Path, streams: bool = False) -> None:
    server = grpc.aio.server()
    kind = StreamPassthrough if streams else Passthrough
    servicer = kind(config["features"], config["serving"], config["feature_service"],
                    config["version"])  # fmt: skip
    gateway_pb2_grpc.add_InferenceGatewayServiceServicer_to_server(servicer, server)
    tasks = []
    if isinstance(servicer, StreamPassthrough):
        tasks.append(asyncio.create_task(servicer.sweep()))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.to_thread(ready.write_text, json.dumps({"address": f"127.0.0.1:{port}"}))
    await server.wait_for_termination()
    for task in tasks:
        task.cancel()


def start_passthrough(workdir: Path, config: dict[str, Any], role: str = "passthrough") -> Service:
    ready = workdir / f"{role}.ready.json"
    command = [sys.executable, __file__, "--role", role, "--config", json.dumps(config),
               "--out", str(ready)]  # fmt: skip
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the passthrough server did not start")
        time.sleep(0.05)
    return Service(role, process, json.loads(ready.read_text()))


# ---------------------------------------------------------------- orchestration


def measure(
    services: dict[str, Service],
    config: LoadConfig,
    workdir: Path,
    profile: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    out = workdir / f"{config.kind}-{config.concurrency}.json"
    command = [sys.executable, __file__, "--role", "loadgen", "--config",
               json.dumps(config.__dict__), "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(command)
    # The services' CPU over the measurement only: the load generator creates the
    # marker when its warm-up is done.
    marker = out.with_suffix(".started")
    limit = time.monotonic() + config.warmup_seconds + config.seconds + 90
    while not marker.exists() and process.poll() is None and time.monotonic() < limit:
        time.sleep(0.01)
    begin = {name: svc.cpu_seconds() for name, svc in services.items()}
    shared_before = upstream_counts(services["gateway"])
    profiler = _profiler(services, config, profile)
    process.wait(max(1.0, limit - time.monotonic()))
    end = {name: svc.cpu_seconds() for name, svc in services.items()}
    shared_after = upstream_counts(services["gateway"])
    if profiler is not None:
        profiler.wait(30)
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed for {config.kind} c={config.concurrency}")
    result: dict[str, Any] = json.loads(out.read_text())
    done = max(1, result["requests"])
    result["server_us"] = {n: (end[n] - begin[n]) / done * 1e6 for n in services}
    result["client_us"] = result["client_cpu"] / done * 1e6
    result["callers_per_call"] = {}
    for dependency, (calls, callers) in shared_after.items():
        calls_before, callers_before = shared_before.get(dependency, (0, 0))
        if calls > calls_before:
            per_call = (callers - callers_before) / (calls - calls_before)
            result["callers_per_call"][dependency] = per_call
    return result


def upstream_counts(gateway: Service) -> dict[str, tuple[float, float]]:
    """The gateway's upstream calls and the requests they carried, per dependency, from
    its /metrics (their ratio over a window is how many requests a call shared)."""
    url = f"http://127.0.0.1:{gateway.info['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, list[float]] = {}
    for line in text.splitlines():
        for slot, metric in enumerate(("upstream_calls_total{", "upstream_callers_total{")):
            if line.startswith("mlbackend_gateway_" + metric):
                dependency = line.split('dependency="', 1)[1].split('"', 1)[0]
                counts.setdefault(dependency, [0.0, 0.0])[slot] = float(line.rsplit(" ", 1)[1])
    return {dependency: (calls, callers) for dependency, (calls, callers) in counts.items()}


def _profiler(
    services: dict[str, Service], config: LoadConfig, profile: tuple[str, Path] | None
) -> subprocess.Popen[bytes] | None:
    """py-spy sampling one service over the measurement, as collapsed stacks (--raw)."""
    if profile is None:
        return None
    name, directory = profile
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"{name}-{config.kind}-c{config.concurrency}.txt"
    py_spy = str(benchkit.py_spy())
    command = [py_spy, "record", "--pid", str(services[name].process.pid), "--format", "raw",
               "--rate", "500", *PROFILE_FLAGS, "--duration", str(max(1, int(config.seconds))),
               "--output", str(output)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'kind':<18} {'c':>3} {'rps':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
            f"{'client':>7} {'gateway':>8} {'passthru':>8} {'features':>8} {'serving':>8} "
            f"{'monitor':>8}  "
            f"parts p50 (fs + serving) / requests per upstream call")  # fmt: skip
    lines = [head, "-" * len(head)]
    for res in results:
        cpu = res["server_us"]
        hop = cpu.get(res["kind"], 0) if res["kind"].startswith("passthrough") else 0
        parts = (
            f"{res['fs_p50']:.2f} + {res['serving_p50']:.2f} ms"
            if res["kind"].startswith("direct")
            else " ".join(
                f"{dep} {per:.2f}" for dep, per in sorted(res["callers_per_call"].items())
            )
        )
        lines.append(
            f"{res['kind']:<18} {res['concurrency']:>3} {res['rps']:>7.0f} {res['p50']:>7.2f} "
            f"{res['p99']:>7.2f} {res['errors']:>6} {res['client_us']:>7.0f} "
            f"{cpu['gateway']:>8.0f} {hop:>8.0f} {cpu['features']:>8.0f} "
            f"{cpu['serving']:>8.0f} "
            f"{cpu['monitoring']:>8.0f}  {parts}"
        )
    lines.append("(CPU columns: µs of CPU per completed request; client = the load generator)")
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]]) -> str:
    by = {(res["kind"], res["concurrency"]): res for res in results}
    lines = []
    base = by.get(("direct-sum", 1))
    for kind in ("passthrough", "passthrough-stream", "passthrough-sync", "gateway-grpc",
                 "gateway-stream", "gateway-http"):  # fmt: skip
        res = by.get((kind, 1))
        if base and res:
            ratio = res["p50"] / base["p50"]
            verdict = "meets" if ratio <= 1.3 else "misses"
            if kind.startswith("passthrough"):
                verdict = "the floor of a Python gRPC hop, for reference"
            lines.append(
                f"c=1  {kind} p50 / direct-sum p50 = {res['p50']:.2f} / {base['p50']:.2f} ms "
                f"= {ratio:.2f}x  (target <= 1.3x: {verdict})"
            )
    streamed = by.get(("direct-stream", 1))
    for kind in ("gateway-grpc", "gateway-stream", "gateway-http"):
        res = by.get((kind, 1))
        if streamed and res:
            lines.append(
                f"c=1  {kind} p50 / direct-stream p50 = {res['p50']:.2f} / "
                f"{streamed['p50']:.2f} ms = {res['p50'] / streamed['p50']:.2f}x  (the gateway's "
                f"overhead over the same calls on streams the caller keeps open)"
            )
    floor = by.get(("passthrough-stream", 1))
    ours = by.get(("gateway-grpc", 1))
    if floor and ours:
        lines.append(
            f"c=1  gateway-grpc p50 / passthrough-stream p50 = {ours['p50'] / floor['p50']:.2f}x  "
            f"(what the gateway's own work costs above a bare hop making the same stream calls)"
        )
    for kind in ("gateway-grpc", "gateway-stream", "gateway-http", "passthrough",
                 "passthrough-stream", "direct-sum", "direct-stream"):  # fmt: skip
        res = by.get((kind, 8))
        if res:
            verdict = "meets" if res["p99"] < 10 else "misses"
            lines.append(f"c=8  {kind} p99 = {res['p99']:.2f} ms  (target < 10 ms: {verdict})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~1.5 minutes (3 s per point)")
    parser.add_argument("--seconds", type=float, help="measurement per point (default 15; quick 3)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per point")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which kinds to measure")
    parser.add_argument(
        "--profile",
        metavar="SERVICE:DIR",
        help="record a py-spy profile (collapsed stacks) of one service per point into DIR",
    )
    parser.add_argument(
        "--role",
        default="main",
        choices=["main", "loadgen", "passthrough", "passthrough-stream", "passthrough-sync"],
    )
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = sorted(set(args.kinds.split(",")) - set(KINDS))
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)}; the kinds are {', '.join(KINDS)}")

    if args.role in ("passthrough", "passthrough-stream"):
        streams = args.role == "passthrough-stream"
        asyncio.run(serve_passthrough(json.loads(args.config), args.out, streams))
        return 0
    if args.role == "passthrough-sync":
        serve_passthrough_sync(json.loads(args.config), args.out)
        return 0
    if args.role == "loadgen":
        config = LoadConfig(**json.loads(args.config))

        args.out.write_text(
            json.dumps(asyncio.run(loadgen(config, args.out.with_suffix(".started"))))
        )
        return 0

    seconds = args.seconds or (3.0 if args.quick else 15.0)
    warmup = 1.0 if args.quick else 2.0
    levels = [int(x) for x in args.concurrency.split(",")]
    profile = None
    if args.profile:
        name, _, directory = args.profile.partition(":")
        profile = (name, Path(directory or "profiles").resolve())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlbackend-bench-gateway-") as tmp:
        workdir = Path(tmp)
        services: dict[str, Service] = {}
        try:
            for name in ("registry", "features", "monitoring"):
                services[name] = start(name, workdir)
            services["serving"] = start(
                "serving", workdir, "--registry", services["registry"].address
            )
            services["gateway"] = start(
                "gateway", workdir,
                "--registry", services["registry"].address,
                "--features", services["features"].address,
                "--serving", services["serving"].address,
                "--monitoring", services["monitoring"].address,
                "--http-port", "0",
            )  # fmt: skip
            addresses = {n: svc.address for n, svc in services.items()}
            version, service_ref = asyncio.run(setup(addresses, np.random.default_rng(7)))
            asyncio.run(wait_served(addresses["serving"], version))
            upstreams = {
                "features": addresses["features"], "serving": addresses["serving"],
                "feature_service": service_ref, "version": version,
            }  # fmt: skip
            services["passthrough"] = start_passthrough(workdir, upstreams)
            services["passthrough-stream"] = start_passthrough(
                workdir, upstreams, "passthrough-stream"
            )
            services["passthrough-sync"] = start_passthrough(workdir, upstreams, "passthrough-sync")
            setup_s = time.monotonic() - started
            print(f"{MODEL}@{version} (HistGradientBoosting, 10 stored features via "
                  f"{service_ref}) READY; setup {setup_s:.0f} s", flush=True)  # fmt: skip
            results = []
            for level in levels:
                for kind in args.kinds.split(","):
                    config = LoadConfig(
                        kind=kind, concurrency=level, seconds=seconds,
                        max_requests=args.max_requests, warmup_seconds=warmup,
                        gateway=addresses["gateway"],
                        http_port=int(services["gateway"].info["http_port"]),
                        features=addresses["features"], serving=addresses["serving"],
                        feature_service=service_ref, version=version,
                        passthrough=services["passthrough"].address,
                        passthrough_stream=services["passthrough-stream"].address,
                        passthrough_sync=services["passthrough-sync"].address,
                    )  # fmt: skip
                    result = measure(services, config, workdir, profile)
                    results.append(result)
                    print(f"  {kind:<18} c={level:<3} p50 {result['p50']:.2f} ms  "
                          f"p99 {result['p99']:.2f} ms  {result['rps']:.0f} rps  "
                          f"errors {result['errors']}", flush=True)  # fmt: skip
        finally:
            stop(list(services.values()))
    print()
    print(
        f"cores: {os.cpu_count()}  per point: {seconds:.0f} s after {warmup:.0f} s warm-up, "
        f"<= {args.max_requests} requests  total {time.monotonic() - started:.0f} s"
    )
    print(table(results))
    print()
    print(ratios(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
