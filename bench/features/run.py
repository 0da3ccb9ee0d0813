"""Feature store benchmark: online reads, writes and point-in-time retrieval against Feast.

Everything below is measured in one run on the same data (10,000 users, 4 events each
= 40,000 source rows, 10 features: 5 double, 5 int64, TTL 1 day):

* online reads of 1 entity x 10 features and 100 entities x 10 features, closed loop
  at concurrency 1 and 8, rps, p50, p99, on the SQLite and on the Redis online store:
  ``mlbackend serve features`` (gRPC ``GetOnlineFeatures``); Feast 0.67 (installed into
  ``~/.cache/mlbackend-bench/feast``) as ``feast serve`` as shipped, ``feast serve
  --workers 2 --max-requests 0`` (HTTP ``/get-online-features``) and ``feast listen``
  (its gRPC server); Feast's in-process ``get_online_features`` as a reference; bare
  gRPC echo servers answering a canned ``GetOnlineFeaturesResponse`` (the ceiling);
* writes, rows/s in batches of 1 and 100: our ``WriteFeatures`` (durable in the
  offline history, then online) against Feast's in-process ``write_to_online_store``;
* historical retrieval of 10,000 entity rows: our ``GetHistoricalFeatures`` (streamed)
  against ``get_historical_features(...).to_df()`` with Feast's file (dask) and DuckDB
  offline stores, and every backend's rows checked against an as-of reference.

Every server is its own process (process group, loopback, ephemeral or free ports).
For each online store, ours, Feast's three servers and the two echo servers are all up
at once, idle but for the one under load; every read point runs on each of them in
turn, in several rounds with a rotated order (the figure is the median of the rounds),
so drift in a shared machine's load hits them alike. The load comes from one separate
load-generator process (``run.py --role loadgen``: grpc.aio, one channel, for gRPC; a
small asyncio HTTP/1.1 keep-alive client, one connection per worker, for Feast's HTTP
server), each point bounded by a duration and a request count. See README.md.

    .venv/bin/python bench/features/run.py            # full run, about 9 minutes
    .venv/bin/python bench/features/run.py --quick    # about 3 minutes (2.5 on a quiet machine)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf import duration_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend.features.v1 import features_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchkit  # bench/benchkit.py: processes, load generator, echo servers
from benchkit import LoadGenerator, free_port, server_env, server_process, wait_for_file

HERE = Path(__file__).resolve().parent
MLBACKEND = HERE.parents[1] / ".venv" / "bin" / "mlbackend"
FEAST_VENV = benchkit.BENCH_CACHE / "feast"
FEAST_PACKAGES = ["feast[grpcio,redis,duckdb]==0.67.0"]
PROFILE_FLAGS = os.environ.get("BENCH_PYSPY_FLAGS", "--gil --nonblocking").split()
FEAST_PROBE = "import feast, duckdb, redis, grpc_health; assert feast.__version__ == '0.67.0'"
VIEW, WRITE_VIEW = "user_stats", "user_writes"
FEATURES = [f"f{i}" for i in range(10)]
REFS = [f"{VIEW}:{name}" for name in FEATURES]
TTL = 86_400
USERS, EVENTS, ENTITY_ROWS = 10_000, 4, 10_000
SHAPES = (1, 100)
CONCURRENCY = (1, 8)
OUR_READ = "/mlbackend.features.v1.FeatureStoreService/GetOnlineFeatures"
OUR_WRITE = "/mlbackend.features.v1.FeatureStoreService/WriteFeatures"
FEAST_READ = "/GrpcFeatureServer/GetOnlineFeatures"
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


# --- data: one set, written to ours and to Feast's Parquet source ------------------------


@dataclass
class Data:
    users: np.ndarray[Any, Any]  # per source row
    times: np.ndarray[Any, Any]  # event time, whole seconds
    values: np.ndarray[Any, Any]  # [rows, 10] float64 (f5..f9 hold whole numbers)
    row_users: np.ndarray[Any, Any]  # per entity row
    row_times: np.ndarray[Any, Any]
    row_kinds: list[str]
    read_ids: list[list[int]]  # 256 reads of 1 entity, 64 reads of 100
    # the as-of reference per entity row: values, and present / expired / not-found
    expected: list[list[float | None]] = field(default_factory=list)
    expected_status: list[str] = field(default_factory=list)

    def latest(self, user: int) -> np.ndarray[Any, Any] | None:
        mine = np.flatnonzero(self.users == user)
        return self.values[mine[np.argmax(self.times[mine])]] if len(mine) else None


def make_data(work: Path, seed: int = 7) -> Data:
    rng = np.random.default_rng(seed)
    base = int(time.time()) - 120
    users = np.repeat(np.arange(1, USERS + 1), EVENTS)
    step = np.tile(np.arange(EVENTS), USERS)
    # Events a day apart with up to 20 h of jitter: gaps of 4 to 44 h against a 1-day
    # TTL, so some as-of times have a value within the TTL and some only an older one.
    times = base - step * 86_400 - rng.integers(0, 72_000, len(users))
    values = np.column_stack(
        [rng.normal(50, 20, (len(users), 5)), rng.integers(0, 1000, (len(users), 5))]
    ).astype(np.float64)
    order = rng.permutation(len(users))  # written out of order
    users, times, values = users[order], times[order], values[order]

    kinds: list[str] = []
    row_users: list[int] = []
    row_times: list[int] = []

    def add(kind: str, n: int, pick_user: Any, pick_time: Any) -> None:
        for _ in range(n):
            user = int(pick_user())
            kinds.append(kind)
            row_users.append(user)
            row_times.append(int(pick_time(user)))

    def event_of(user: int) -> int:
        mine = times[users == user]
        return int(mine[rng.integers(len(mine))])

    any_user = lambda: rng.integers(1, USERS + 1)  # noqa: E731
    add("random", 6500, any_user, lambda u: rng.integers(base - 390_000, base + 1))
    add("equal-time", 1000, any_user, event_of)
    add("ttl-boundary", 1000, any_user, lambda u: event_of(u) + TTL)
    add("past-ttl", 500, any_user, lambda u: event_of(u) + TTL + 1)
    add("unknown-entity", 500, lambda: rng.integers(USERS + 1, 2 * USERS), lambda u: base)
    picks = rng.integers(0, len(kinds), 500)
    for p in picks:
        kinds.append("duplicate")
        row_users.append(row_users[p])
        row_times.append(row_times[p])
    shuffle = rng.permutation(len(kinds))
    data = Data(
        users,
        times,
        values,
        np.array(row_users)[shuffle],
        np.array(row_times)[shuffle],
        [kinds[i] for i in shuffle],
        [[int(u)] for u in rng.integers(1, USERS + 1, 256)]
        + [[int(u) for u in rng.choice(USERS, 100, replace=False) + 1] for _ in range(64)],
    )
    ts = pa.timestamp("us", tz="UTC")
    columns = {
        "user_id": pa.array(users, pa.int64()),
        "event_timestamp": pa.array(times * 1_000_000, pa.int64()).cast(ts),
    }
    for i, name in enumerate(FEATURES):
        column = values[:, i]
        columns[name] = pa.array(column if i < 5 else column.astype(np.int64))
    pq.write_table(pa.table(columns), work / "source.parquet")
    entity_rows = {
        "user_id": pa.array(data.row_users, pa.int64()),
        "event_timestamp": pa.array(data.row_times * 1_000_000, pa.int64()).cast(ts),
        "row_id": pa.array(np.arange(len(kinds)), pa.int64()),
    }
    pq.write_table(pa.table(entity_rows), work / "entity_rows.parquet")
    (work / "read_ids.json").write_text(json.dumps(data.read_ids))
    data.expected, data.expected_status = reference(data)
    return data


def reference(data: Data) -> tuple[list[list[float | None]], list[str]]:
    """As-of join by brute force: the latest event at or before the row, within the TTL."""
    by_user: dict[int, np.ndarray[Any, Any]] = {}
    for index in np.argsort(data.users, kind="stable"):
        by_user.setdefault(int(data.users[index]), np.empty(0, int))
    for user in by_user:
        by_user[user] = np.flatnonzero(data.users == user)
    rows: list[list[float | None]] = []
    statuses: list[str] = []
    for user, as_of in zip(data.row_users, data.row_times, strict=True):
        mine = by_user.get(int(user), np.empty(0, int))
        mine = mine[data.times[mine] <= as_of]
        if not len(mine):
            rows.append([None] * len(FEATURES))
            statuses.append("not-found")
            continue
        latest = mine[np.argmax(data.times[mine])]
        if as_of - data.times[latest] > TTL:
            rows.append([None] * len(FEATURES))
            statuses.append("expired")
        else:
            rows.append([float(v) for v in data.values[latest]])
            statuses.append("present")
    return rows, statuses


def agreement(label: str, got: list[list[float | None] | None], data: Data) -> str:
    """One line: how many entity rows match the reference; the others by kind of row.

    ``got[i] is None`` means the backend returned no row at all for entity row ``i``."""
    wrong: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    missing_status: Counter[str] = Counter()
    want = data.expected
    for kind, a, b, status in zip(data.row_kinds, got, want, data.expected_status, strict=True):
        if a is None:
            missing[kind] += 1
            missing_status[status] += 1
        elif a != b:
            wrong[kind] += 1
    same = len(want) - sum(wrong.values()) - sum(missing.values())
    detail = ", ".join(f"{k} {n}" for k, n in sorted(wrong.items())) or "none"
    line = f"  {label:<28} {same:>6}/{len(want)} rows as the reference; other values: {detail}"
    if missing:
        line += "; rows not returned: " + ", ".join(f"{k} {n}" for k, n in sorted(missing.items()))
        line += (
            " (reference says "
            + ", ".join(f"{k} {n}" for k, n in sorted(missing_status.items()))
            + ")"
        )
    return line


# --- our feature store ------------------------------------------------------------------


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(seconds))


def _key(user: int) -> c.EntityKey:
    return c.EntityKey(join_keys={"user_id": c.Value(int64_value=int(user))})


def _row(user: int, when: int, values: np.ndarray[Any, Any]) -> f.FeatureRow:
    cells = [c.Value(double_value=float(v)) for v in values[:5]]
    cells += [c.Value(int64_value=int(v)) for v in values[5:]]
    return f.FeatureRow(entity_key=_key(user), event_time=_ts(when), values=cells)


def _definitions() -> f.ApplyDefinitionsRequest:
    features = [
        f.Feature(name=name, dtype=c.DATA_TYPE_DOUBLE if i < 5 else c.DATA_TYPE_INT64)
        for i, name in enumerate(FEATURES)
    ]
    return f.ApplyDefinitionsRequest(
        entities=[
            f.Entity(name="user", join_keys=[f.JoinKey(name="user_id", dtype=c.DATA_TYPE_INT64)])
        ],
        feature_views=[
            f.FeatureView(
                name=name,
                entities=["user"],
                features=features,
                ttl=duration_pb2.Duration(seconds=TTL),
            )
            for name in (VIEW, WRITE_VIEW)
        ],
    )


def _plain(value: c.Value) -> float | None:
    kind = value.WhichOneof("kind")
    return None if kind in (None, "null_value") else float(getattr(value, kind))


def load_ours(stub: Any, data: Data) -> float:
    """Definitions and the 40,000 source rows in batches of 1,000; returns rows/s."""
    stub.ApplyDefinitions(_definitions(), timeout=30)
    started = time.perf_counter()
    for start in range(0, len(data.users), 1000):
        rows = [
            _row(data.users[i], data.times[i], data.values[i])
            for i in range(start, min(start + 1000, len(data.users)))
        ]
        batch = f.FeatureBatch(feature_view=VIEW, features=FEATURES, rows=rows)
        stub.WriteFeatures(f.WriteFeaturesRequest(batch=batch), timeout=60)
    return len(data.users) / (time.perf_counter() - started)


def our_read_requests(data: Data) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for size in SHAPES:
        out[size] = [
            f.GetOnlineFeaturesRequest(feature_refs=REFS, entity_keys=[_key(u) for u in ids])
            .SerializeToString()
            .hex()
            for ids in data.read_ids
            if len(ids) == size
        ]
    return out


def our_write_requests(data: Data, size: int) -> list[str]:
    """Batches of ``size`` rows for the write view, newer than anything in the source."""
    base = int(data.times.max()) + 1
    batches = []
    for b in range(max(1, 256 // size)):
        rows = [
            _row(data.users[(b * size + i) % len(data.users)], base + b, data.values[i])
            for i in range(size)
        ]
        batch = f.FeatureBatch(feature_view=WRITE_VIEW, features=FEATURES, rows=rows)
        batches.append(f.WriteFeaturesRequest(batch=batch).SerializeToString().hex())
    return batches


def our_historical(
    stub: Any, data: Data, repeats: int
) -> dict[str, tuple[float, list[Any], Counter[str]]]:
    """Median seconds, rows and statuses of a retrieval, per result format: ``rows``
    (entity rows in, FeatureValueRow messages out) and ``arrow`` (an Arrow entity table
    in, Arrow record batches out, joined into one table: the data-frame case, like
    Feast's ``to_df()``); the two are timed alternately."""
    request = f.GetHistoricalFeaturesRequest(
        feature_refs=REFS,
        entity_rows=[
            f.EntityRow(entity_key=_key(u), event_time=_ts(t))
            for u, t in zip(data.row_users, data.row_times, strict=True)
        ],
    )
    entities = pa.table(
        {
            "user_id": pa.array(data.row_users, pa.int64()),
            "event_timestamp": pa.array(data.row_times * 1_000_000, pa.timestamp("us", tz="UTC")),
        }
    )

    def by_arrow() -> pa.Table:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, entities.schema) as writer:
            writer.write_table(entities)
        arrow_request = f.GetHistoricalFeaturesRequest(
            feature_refs=REFS,
            entity_table=sink.getvalue().to_pybytes(),
            result_format=f.RESULT_FORMAT_ARROW,
        )
        chunks = stub.GetHistoricalFeatures(arrow_request, timeout=300)
        return pa.concat_tables(pa.ipc.open_stream(ch.arrow).read_all() for ch in chunks)

    times: dict[str, list[float]] = {"rows": [], "arrow": []}
    table: pa.Table | None = None
    for _ in range(repeats):
        started = time.perf_counter()
        chunks = list(stub.GetHistoricalFeatures(request, timeout=300))
        times["rows"].append(time.perf_counter() - started)
        started = time.perf_counter()
        table = by_arrow()
        times["arrow"].append(time.perf_counter() - started)
    assert table is not None
    rows = [[_plain(v.value) for v in row.values] for chunk in chunks for row in chunk.rows]
    statuses = Counter(
        c.FeatureStatus.Name(row.values[0].status) for chunk in chunks for row in chunk.rows
    )
    columns = [table.column(ref).to_pylist() for ref in REFS]
    arrow_rows = [list(row) for row in zip(*columns, strict=True)]
    arrow_statuses = Counter(
        "FEATURE_STATUS_" + s for s in table.column(f"{REFS[0]}__status").to_pylist()
    )
    return {
        "rows": (statistics.median(times["rows"]), rows, statuses),
        "arrow": (statistics.median(times["arrow"]), arrow_rows, arrow_statuses),
    }


def check_values(label: str, got: list[list[float | None]], data: Data) -> str:
    """The check read (the last 100-entity read) against the source's latest values."""
    ids = data.read_ids[-1]
    same = 0
    for user, row in zip(ids, got, strict=True):
        latest = data.latest(user)
        same += latest is not None and [float(v) for v in latest] == row
    return f"  {label:<28} {same}/{len(ids)} entities hold the source's latest values"


# --- Feast ------------------------------------------------------------------------------


def feast_python() -> Path:
    return benchkit.ensure_venv(FEAST_VENV, FEAST_PACKAGES, FEAST_PROBE)


def feast_side(python: Path, work: Path, *args: str, timeout: float = 900) -> dict[str, Any]:
    command = [str(python), str(HERE / "feast_side.py"), *args, "--work", str(work)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=server_env(), cwd=work
    )
    if done.returncode:
        raise RuntimeError(f"feast_side {args[0]} failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def feast_http_values(port: int, data: Data) -> list[list[float | None]]:
    body = json.dumps({"features": REFS, "entities": {"user_id": data.read_ids[-1]}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/get-online-features",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        payload = json.loads(answer.read())
    names = payload["metadata"]["feature_names"]
    columns = {n: r["values"] for n, r in zip(names, payload["results"], strict=True)}
    return [
        [None if columns[n][i] is None else float(columns[n][i]) for n in FEATURES]
        for i in range(len(data.read_ids[-1]))
    ]


def feast_frame_rows(path: Path) -> list[list[float | None] | None]:
    """Feast's result in entity-row order (by ``row_id``); None where a row is missing."""
    table = pq.read_table(path).to_pydict()
    rows: list[list[float | None] | None] = [None] * ENTITY_ROWS
    for i, row_id in enumerate(table["row_id"]):
        values = [table[n][i] for n in FEATURES]
        row = [None if v is None or v != v else float(v) for v in values]
        if rows[row_id] is not None and rows[row_id] != row:
            raise RuntimeError(f"Feast returned row {row_id} twice, with different values")
        rows[row_id] = row
    return rows


# --- measurement ------------------------------------------------------------------------


@dataclass
class Result(benchkit.Measurement):
    store: str
    shape: str  # "1x10", "100x10", "write-1", "write-100"
    server: str
    concurrency: int


@dataclass
class Plan:
    warmup: float
    seconds: float
    repeats: int  # historical retrievals per backend (median)
    rounds: int  # interleaved rounds per read point (median)
    max_requests: int = 200_000
    profile: Path | None = None  # py-spy records of our server at c=8, one per store/shape
    results: list[Result] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # agreement and other findings
    extra: dict[str, float] = field(default_factory=dict)

    def say(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)


def measure(
    plan: Plan,
    gen: LoadGenerator,
    pid: int,
    result: Result,
    target: dict[str, Any],
    requests: list[str],
    check: str = "",
) -> Result:
    command = {
        **target,
        "requests": requests,
        "concurrency": result.concurrency,
        "warmup": plan.warmup,
        "seconds": plan.seconds,
        "max_requests": plan.max_requests,
        "check": check,
    }
    result.take(gen.run(command, pid))
    return result


def show(result: Result, rounds: int = 1) -> None:
    print(
        f"  {result.store:<6} {result.shape:<9} {result.server:<16} c={result.concurrency:<2}"
        f" {result.rps:8.0f} rps  p50 {result.p50 * 1e3:7.2f} ms  p99 {result.p99 * 1e3:7.2f}"
        f" ms  max {result.worst * 1e3:7.1f} ms  server {result.server_cpu:.2f} cpu"
        f"  client {result.client_cpu:.2f} cpu"
        + (f"  (median of {rounds})" if rounds > 1 else "")
        + (f"  reconnects {result.reconnects}" if result.reconnects else "")
        + (f"  errors {result.errors} {result.note}" if result.note else ""),
        flush=True,
    )


def median_of(results: list[Result]) -> Result:
    """One result from interleaved rounds: medians; the worst latency; errors summed."""
    first = results[0]
    out = Result(first.store, first.shape, first.server, first.concurrency)
    for name in ("rps", "p50", "p99", "server_cpu", "client_cpu"):
        setattr(out, name, statistics.median(getattr(r, name) for r in results))
    out.worst = max(r.worst for r in results)
    out.errors = sum(r.errors for r in results)
    out.reconnects = sum(r.reconnects for r in results)
    out.note = next((r.note for r in results if r.note), "")
    return out


def _needle(data: Data, ids: list[int]) -> str:
    """Bytes every correct protobuf answer to a read of ``ids`` holds: f0 of the first id."""
    latest = data.latest(ids[0])
    return "" if latest is None else struct.pack("<d", float(latest[0])).hex()


def _check_first(label: str, answer: bytes) -> None:
    if label and bytes.fromhex(label) not in answer:
        raise RuntimeError("the first answer lacks the expected value of f0")


@contextmanager
def py_spy(pid: int, out: Path | None, seconds: float) -> Iterator[None]:
    """``py-spy record`` of ``pid`` (collapsed stacks to ``out``) around the block; flags
    ``--gil --nonblocking`` unless BENCH_PYSPY_FLAGS gives others (``--native`` shows gRPC's
    C core)."""
    if out is None:
        yield
        return
    spy = benchkit.py_spy()
    command = [str(spy), "record", "--pid", str(pid), *PROFILE_FLAGS, "--rate", "250",
               "--format", "raw", "--duration", str(int(seconds) + 1), "-o", str(out)]  # fmt: skip
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        recorder.wait(timeout=seconds + 30)
    print(top_frames(out), flush=True)


def top_frames(path: Path, most: int = 12) -> str:
    """The functions the samples were in (self) and under (total), as shares of samples."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame.split(" (")[0] + " " + frame.rsplit("/", 1)[-1].split(":")[0]
                  for frame in stack.split(";")]  # fmt: skip
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            under[frame] += n
    lines = [f"  py-spy {path.name}: {total} samples holding the GIL; self / total:"]
    for frame, n in own.most_common(most):
        lines.append(f"    {n / total:6.1%} {under[frame] / total:6.1%}  {frame}")
    return "\n".join(lines)


@contextmanager
def redis_server(log: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no"]  # fmt: skip
    with server_process(command, server_env(), log) as process:
        benchkit.wait_for_port(port, process)
        yield port


@dataclass
class Server:
    """A running server under load: where to send, what to send per read shape."""

    name: str
    pid: int
    target: dict[str, Any]
    requests: dict[int, list[str]]
    checks: dict[int, str]  # per shape: the bytes a correct protobuf answer holds (hex)


def start_ours(
    stack: ExitStack,
    plan: Plan,
    work: Path,
    data: Data,
    store: str,
    redis_port: int,
    front: str = "threads",
) -> tuple[Server, str]:
    """Our feature store for ``store`` on gRPC ``front``, loaded with the source rows and
    checked."""
    name = "mlbackend" if front == "threads" else f"mlbackend-{front}"
    ready = work / f"{name}-{store}.ready.json"
    ready.unlink(missing_ok=True)
    command = [str(MLBACKEND), "serve", "features", "--port", "0", "--metrics-port", "0",
               "--data-dir", str(work / f"{name}-{store}"), "--ready-file", str(ready),
               "--grace-seconds", "2", "--log-level", "WARNING",
               "--features-front", front]  # fmt: skip
    if store == "redis":
        command += ["--online-store", "redis", "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
                    "--redis-prefix", f"{name}:"]  # fmt: skip
    log = work / f"{name}-{store}.log"
    process = stack.enter_context(server_process(command, server_env(), log))
    address = wait_for_file(ready, process)["address"]
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        stub = features_pb2_grpc.FeatureStoreServiceStub(channel)
        plan.extra[f"mlbackend {store}: 40,000 source rows written, rows/s"] = load_ours(stub, data)
        check = f.GetOnlineFeaturesRequest(
            feature_refs=REFS, entity_keys=[_key(u) for u in data.read_ids[-1]]
        )
        answer = stub.GetOnlineFeatures(check, timeout=30)
        got = [[_plain(v.value) for v in row.values] for row in answer.rows]
        plan.say(check_values(f"online {name} {store}", got, data))
    target = {"kind": "grpc", "address": address, "method": OUR_READ}
    server = Server(name, process.pid, target, our_read_requests(data), _checks(data))
    return server, address


def ours_writes_and_history(
    plan: Plan, gen: LoadGenerator, ours: Server, address: str, data: Data, store: str
) -> None:
    for size in SHAPES:
        target = {"kind": "grpc", "address": address, "method": OUR_WRITE}
        result = Result(store, f"write-{size}", "mlbackend", 1)
        measure(plan, gen, ours.pid, result, target, our_write_requests(data, size))
        plan.results.append(result)
        show(result)
    with grpc.insecure_channel(address, options=GRPC_OPTIONS) as channel:
        stub = features_pb2_grpc.FeatureStoreServiceStub(channel)
        formats = our_historical(stub, data, plan.repeats)
    for form, (seconds, rows, statuses) in formats.items():
        label = f"mlbackend {store}" + (" arrow" if form == "arrow" else "")
        plan.extra[f"historical {label}"] = seconds
        plan.say(f"  historical {label}: {seconds:.3f} s; statuses {dict(statuses)}")
        pit_rows: list[list[float | None] | None] = list(rows)
        plan.say(agreement(f"PIT {label}", pit_rows, data))


FEAST_CONFIGS = {
    "feast-serve": ["serve"],
    "feast-serve-w2": ["serve", "--workers", "2", "--max-requests", "0"],
    "feast-listen": ["listen"],
}


def start_feast(
    stack: ExitStack,
    plan: Plan,
    work: Path,
    data: Data,
    store: str,
    python: Path,
    setup: dict[str, Any],
) -> list[Server]:
    """Feast's three server configurations on ``store``, each checked once started."""
    repo = setup["repos"][store]
    servers = []
    for name, args in FEAST_CONFIGS.items():
        port = free_port()
        listen = args[0] == "listen"
        where = ["-a", f"127.0.0.1:{port}"] if listen else ["-h", "127.0.0.1", "-p", str(port)]
        command = [str(python.parent / "feast"), "-c", repo, *args, *where]
        log = work / f"{name}-{store}.log"
        process = stack.enter_context(server_process(command, server_env(), log, Path(repo)))
        benchkit.wait_for_port(port, process)
        kind = "grpc" if listen else "http"
        requests = {size: setup["requests"][f"{kind}-{size}"] for size in SHAPES}
        if listen:
            target = {"kind": "grpc", "address": f"127.0.0.1:{port}", "method": FEAST_READ}
            servers.append(Server(name, process.pid, target, requests, _checks(data)))
            continue
        time.sleep(1.0)  # gunicorn forks its workers after the port is bound
        plan.say(check_values(f"online {name} {store}", feast_http_values(port, data), data))
        target = {"kind": "http", "port": port, "path": "/get-online-features"}
        servers.append(Server(name, process.pid, target, requests, {}))
    return servers


def start_echo(stack: ExitStack, work: Path, data: Data, kind: str) -> Server:
    ready = work / f"echo-{kind}.ready.json"
    ready.unlink(missing_ok=True)  # left by the previous store's round
    command = [sys.executable, __file__, "--role", f"echo-{kind}", "--ready-file", str(ready)]
    log = work / f"echo-{kind}.log"
    process = stack.enter_context(server_process(command, server_env(), log))
    address = wait_for_file(ready, process)["address"]
    target = {"kind": "grpc", "address": address, "method": OUR_READ}
    return Server(f"echo-{kind}", process.pid, target, our_read_requests(data), {})


def _checks(data: Data) -> dict[int, str]:
    return {
        size: _needle(data, next(ids for ids in data.read_ids if len(ids) == size))
        for size in SHAPES
    }


def interleaved_reads(plan: Plan, gen: LoadGenerator, store: str, servers: list[Server]) -> None:
    """Every read point on every server, in rounds; each round in a rotated server order.

    The servers are all up at once (idle but for the one under load), so drift in a
    shared machine's load hits them alike; each figure is the median of its rounds."""
    for size in SHAPES:
        for concurrency in CONCURRENCY:
            taken: dict[str, list[Result]] = {s.name: [] for s in servers}
            for r in range(plan.rounds):
                shift = r % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    result = Result(store, f"{size}x10", server.name, concurrency)
                    record = None
                    if plan.profile and server.name == "mlbackend" and concurrency > 1:
                        record = plan.profile / f"mlbackend-{store}-{size}x10-c{concurrency}.txt"
                        record = None if record.exists() else record
                    with py_spy(server.pid, record, plan.warmup + plan.seconds):
                        measure(plan, gen, server.pid, result, server.target,
                                server.requests[size], server.checks.get(size, ""))  # fmt: skip
                    taken[server.name].append(result)
            for server in servers:
                result = median_of(taken[server.name])
                plan.results.append(result)
                show(result, plan.rounds)


def run_feast_sdk(
    plan: Plan, work: Path, data: Data, store: str, python: Path, setup: dict[str, Any]
) -> None:
    seconds = str(plan.seconds)
    out = feast_side(python, work, "sdk", "--repo", setup["repos"][store], "--seconds", seconds)
    values = [
        [None if v is None else float(v) for v in row]
        for row in zip(*out["values"].values(), strict=True)
    ]
    plan.say(check_values(f"online feast-sdk {store}", values, data))
    timings = [(f"{size}x10", timed) for size, timed in out["read"].items()]
    timings += [(f"write-{size}", timed) for size, timed in out["write"].items()]
    for shape, timed in timings:
        result = Result(store, shape, "feast-sdk", 1, note="in-process")
        result.rps, result.p50, result.p99 = timed["rps"], timed["p50"], timed["p99"]
        plan.results.append(result)
        figure = f"{timed['rows_per_s']:8.0f} rows/s" if "rows_per_s" in timed else (
            f"{timed['rps']:8.0f} calls/s")  # fmt: skip
        print(
            f"  {store:<6} {shape:<9} feast-sdk (in-process) {figure}  "
            f"p50 {timed['p50'] * 1e3:7.2f} ms  p99 {timed['p99'] * 1e3:7.2f} ms",
            flush=True,
        )


def run_feast_historical(plan: Plan, work: Path, data: Data, python: Path, setup: Any) -> None:
    for name, repo in (("file", setup["repos"]["sqlite"]), ("duckdb", setup["repos"]["duckdb"])):
        result = work / f"feast-historical-{name}.parquet"
        args = ["historical", "--repo", repo, "--repeats", str(plan.repeats)]
        args += ["--result", str(result)]
        try:
            out = feast_side(python, work, *args)
        except RuntimeError as exc:
            plan.say(f"  historical feast {name}: FAILED {str(exc)[-300:]}")
            continue
        plan.extra[f"historical feast {name}"] = out["seconds"]
        plan.say(
            f"  historical feast {name}: {out['seconds']:.2f} s ({out['rows']} rows returned "
            f"for {ENTITY_ROWS} entity rows)"
        )
        rows = feast_frame_rows(result)
        plan.say(agreement(f"PIT feast ({name} offline)", rows, data))


# --- echo: the ceiling ------------------------------------------------------------------


def _canned(size: int) -> f.GetOnlineFeaturesResponse:
    response = f.GetOnlineFeaturesResponse(
        schema=[
            c.FeatureSpec(name=ref, dtype=c.DATA_TYPE_DOUBLE if i < 5 else c.DATA_TYPE_INT64)
            for i, ref in enumerate(REFS)
        ]
    )
    for e in range(size):
        row = response.rows.add()
        for i in range(10):
            value = c.Value(double_value=e + i / 7) if i < 5 else c.Value(int64_value=e * 10 + i)
            row.values.add(
                value=value, status=c.FEATURE_STATUS_PRESENT, event_time=_ts(1_700_000_000)
            )
    return response


def echo_main(kind: str, ready_file: Path) -> None:
    canned = {size: _canned(size) for size in SHAPES}
    benchkit.serve_echo(
        kind,
        ready_file,
        "mlbackend.features.v1.FeatureStoreService",
        "GetOnlineFeatures",
        f.GetOnlineFeaturesRequest.FromString,
        lambda request: canned.get(len(request.entity_keys), canned[1]),
        f.GetOnlineFeaturesResponse.SerializeToString,
    )


# --- report -----------------------------------------------------------------------------

FEAST_SERVERS = ("feast-serve", "feast-serve-w2", "feast-listen")
ECHOS = ("echo-aio", "echo-sync")


def _pick(plan: Plan, store: str, shape: str, c_: int, servers: tuple[str, ...]) -> Result | None:
    found = [
        r
        for r in plan.results
        if r.store in (store, "-")
        and r.shape == shape
        and r.concurrency == c_
        and r.server in servers
        and r.rps > 0
        and not r.errors
    ]
    return max(found, key=lambda r: r.rps, default=None)


def _ratio(a: float, b: float | None) -> float:
    return a / b if b else float("nan")


def report(plan: Plan) -> None:
    print(
        f"\nOnline reads over loopback, {os.cpu_count()} CPUs, nothing pinned; cpu = cores busy "
        "during the measurement (server: its process tree; client: the load generator).\n"
        "xFeast = ratio to Feast's best server (rps) at that store, shape and concurrency; "
        "xceil = ratio to the better echo server."
    )
    header = (
        f"{'store':<7}{'read':<8}{'c':>2}  {'server':<17}{'rps':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'max ms':>8}{'srv cpu':>8}{'cli cpu':>8}{'µs/req':>7}{'xFeast':>7}{'xF p99':>7}"
        f"{'xceil':>7}"
    )
    print(header)
    print("-" * len(header))
    for store in ("sqlite", "redis"):
        for shape in (f"{s}x10" for s in SHAPES):
            for c_ in CONCURRENCY:
                feast = _pick(plan, store, shape, c_, FEAST_SERVERS)
                ceiling = _pick(plan, store, shape, c_, ECHOS)
                rows = [
                    r
                    for r in plan.results
                    if r.store in (store, "-") and r.shape == shape and r.concurrency == c_
                ]
                for r in rows:
                    per_req = r.server_cpu / r.rps * 1e6 if r.rps else float("nan")
                    mark = "*" if r is feast or r is ceiling else " "
                    flags = f"  reconnects {r.reconnects}" if r.reconnects else ""
                    flags += f"  ERRORS {r.errors}: {r.note[:200]}" if r.errors else ""
                    flags += f"  FAILED: {r.note[:200]}" if not r.rps and r.note else ""
                    flags += "  (in-process, no server)" if r.server == "feast-sdk" else ""
                    print(
                        f"{store:<7}{shape:<8}{c_:>2}  {r.server + mark:<17}{r.rps:>8.0f}"
                        f"{r.p50 * 1e3:>8.2f}{r.p99 * 1e3:>8.2f}{r.worst * 1e3:>8.1f}"
                        f"{r.server_cpu:>8.2f}{r.client_cpu:>8.2f}{per_req:>7.0f}"
                        f"{_ratio(r.rps, feast and feast.rps):>7.2f}"
                        f"{_ratio(r.p99, feast and feast.p99):>7.2f}"
                        f"{_ratio(r.rps, ceiling and ceiling.rps):>7.2f}{flags}"
                    )
                print()
    print("* = Feast's best server / the ceiling for that row.\n")

    print("Writes, one writer (rows/s; ours over gRPC, durable in the offline history and")
    print("applied online; Feast in-process write_to_online_store, online only):")
    for store in ("sqlite", "redis"):
        for size in SHAPES:
            ours = _pick(plan, store, f"write-{size}", 1, ("mlbackend",))
            feast = _pick(plan, store, f"write-{size}", 1, ("feast-sdk",))
            o = ours.rps * size if ours else float("nan")
            fe = feast.rps * size if feast else float("nan")
            print(
                f"  {store:<6} batch {size:>3}: mlbackend {o:9.0f} rows/s (p50 "
                f"{(ours.p50 if ours else float('nan')) * 1e3:.2f} ms), feast {fe:9.0f} rows/s "
                f"(p50 {(feast.p50 if feast else float('nan')) * 1e3:.2f} ms)  x{_ratio(o, fe):.2f}"
            )
    print()
    print("Historical retrieval, 10,000 entity rows against 40,000 source rows (median;")
    print("rows = FeatureValueRow messages, arrow = Arrow entity table in, record batches out):")
    extra = plan.extra
    for store in ("sqlite", "redis"):
        for form in ("", " arrow"):
            mine = extra.get(f"historical mlbackend {store}{form}", float("nan"))
            for name in ("file", "duckdb"):
                theirs = extra.get(f"historical feast {name}", float("nan"))
                print(
                    f"  mlbackend ({store} online, {form.strip() or 'rows'}) {mine:6.3f} s vs "
                    f"feast {name:<6} {theirs:6.3f} s: ours takes {_ratio(mine, theirs):.2f}x "
                    "Feast's time"
                )
    print("\nPoint-in-time agreement and online values:")
    for line in plan.lines:
        if line.startswith("  PIT") or line.startswith("  online"):
            print(line)
    for key, value in extra.items():
        if "rows/s" in key or "materialize" in key:
            print(f"  {key}: {value:.0f}" if "rows/s" in key else f"  {key}: {value:.1f} s")

    print("\nTargets (issue #4, item 11):")
    for store in ("sqlite", "redis"):
        for shape in (f"{s}x10" for s in SHAPES):
            ours = _pick(plan, store, shape, 8, ("mlbackend",))
            feast = _pick(plan, store, shape, 8, FEAST_SERVERS)
            ceiling = _pick(plan, store, shape, 8, ECHOS)
            if ours and feast:
                print(
                    f"  {store} {shape} c=8: {ours.rps / feast.rps:.2f}x {feast.server}'s rps "
                    f"(target ≥ 1.5), p99 {ours.p99 / feast.p99:.2f}x its p99 (target ≤ 0.5)"
                )
            if ours and ceiling:
                print(
                    f"  {store} {shape} c=8: {ours.rps / ceiling.rps:.0%} of the ceiling "
                    f"({ceiling.server}) (target ≥ 60 %)"
                )
        ours = _pick(plan, store, "100x10", 1, ("mlbackend",))
        sdk = _pick(plan, store, "100x10", 1, ("feast-sdk",))
        if ours and sdk:
            print(
                f"  {store} 100x10 c=1: gRPC p50 {ours.p50 * 1e3:.2f} ms vs Feast in-process "
                f"p50 {sdk.p50 * 1e3:.2f} ms = {ours.p50 / sdk.p50:.2f}x (target < 1)"
            )
        best = min(
            (extra[k] for k in ("historical feast file", "historical feast duckdb") if k in extra),
            default=None,
        )
        for form in ("", " arrow"):
            hist = extra.get(f"historical mlbackend {store}{form}")
            if hist and best:
                print(
                    f"  {store} historical ({form.strip() or 'rows'}): {hist:.3f} s vs Feast's "
                    f"fastest {best:.3f} s = {hist / best:.2f}x its time (target ≤ 1)"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: about 3 minutes")
    parser.add_argument(
        "--seconds", type=float, help="measurement per point and round (default 2, quick 0.7)"
    )
    parser.add_argument(
        "--only", help="comma-separated: ours,ours-asyncio,feast,echo (default all)"
    )
    parser.add_argument("--keep", type=Path, help="keep the work files (logs, repos) here")
    parser.add_argument(
        "--profile", type=Path, help="py-spy record our server at c=8 into this folder"
    )
    benchkit.add_role_arguments(parser)
    args = parser.parse_args()
    if benchkit.run_role(args, _check_first, echo_main):
        return

    plan = Plan(
        warmup=0.2 if args.quick else 0.5,
        seconds=args.seconds or (0.7 if args.quick else 2.0),
        repeats=1 if args.quick else 3,
        rounds=1 if args.quick else 3,
        profile=args.profile,
    )
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    only = set((args.only or "ours,ours-asyncio,feast,echo").split(","))
    started = time.perf_counter()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory(prefix="mlbackend-bench-features-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = make_data(work)
        python = feast_python() if "feast" in only else None
        with redis_server(work / "redis.log") as redis_port:
            setup: dict[str, Any] = {}
            if python:
                setup = feast_side(python, work, "setup", "--redis", f"127.0.0.1:{redis_port},db=1")
                for name, seconds in setup["materialize_s"].items():
                    plan.extra[f"feast materialize {name}"] = seconds
            gen = LoadGenerator(__file__)
            try:
                for store in ("sqlite", "redis"):
                    with ExitStack() as stack:
                        servers: list[Server] = []
                        if "ours" in only:
                            ours, address = start_ours(stack, plan, work, data, store, redis_port)
                            servers.append(ours)
                        if "ours-asyncio" in only:
                            servers.append(
                                start_ours(
                                    stack, plan, work, data, store, redis_port, front="asyncio"
                                )[0]
                            )
                        if python:
                            servers += start_feast(stack, plan, work, data, store, python, setup)
                        if "echo" in only:
                            servers += [start_echo(stack, work, data, k) for k in ("aio", "sync")]
                        interleaved_reads(plan, gen, store, servers)
                        if "ours" in only:
                            ours_writes_and_history(plan, gen, ours, address, data, store)
                    if python:
                        run_feast_sdk(plan, work, data, store, python, setup)
                if python:
                    run_feast_historical(plan, work, data, python, setup)
            finally:
                gen.close()
    report(plan)
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"run took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
