"""Serving benchmark: single-row OIP v2 ModelInfer at concurrency 1, 8 and 32.

Servers, all measured in one run by one load generator process:

* ``mlbackend``: ``mlbackend serve serving --model-dir`` (our serving);
* MLServer + mlserver-sklearn (installed into its own venv under
  ``~/.cache/mlbackend-bench/mlserver``) with its defaults, and with adaptive batching
  (max batch 32, max wait 1 ms and 10 ms); its best configuration is the baseline;
* a bare ``grpc.aio`` and a bare sync (thread pool) gRPC server answering ModelInfer
  with a canned response: the ceiling for Python gRPC on this machine.

Models: RandomForest (100 trees, depth 8) and HistGradientBoosting, 10 features.
Every server runs as its own process, one at a time, for the sweep over concurrency;
then ours and both echo servers run together for alternated rounds at concurrency 32
(``--rounds``), whose median ratio is the verdict on the ceiling target. The load
generator is one more process (closed loop, N concurrent ``grpc.aio`` workers on one
channel, bounded by a request count and a duration, loopback only). Nothing is pinned
to a CPU. Every server process gets ``OMP_NUM_THREADS=1`` (ours sets it itself; on few
cores it helps MLServer too). See README.md.

    .venv/bin/python bench/serving/run.py            # full run, about 7 minutes
    .venv/bin/python bench/serving/run.py --quick    # about 2 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchkit  # bench/benchkit.py: processes, load generator, echo servers
from benchkit import LoadGenerator, free_port, server_env, server_process, wait_for_file

ROOT = Path(__file__).resolve().parents[2]
MLBACKEND = ROOT / ".venv" / "bin" / "mlbackend"
MLSERVER_VENV = benchkit.BENCH_CACHE / "mlserver"
# uvloop 0.22 made get_event_loop() raise outside a loop: MLServer 1.7's inference
# workers die at start with it.
MLSERVER_PACKAGES = ["mlserver", "mlserver-sklearn", "uvloop<0.22"]
MLSERVER_PROBE = (
    "import mlserver_sklearn, uvloop; "
    "assert tuple(int(p) for p in uvloop.__version__.split('.')[:2]) < (0, 22)"
)
INFER = "/inference.GRPCInferenceService/ModelInfer"
FEATURES = [f"f{i}" for i in range(10)]
MODELS = ("rf", "hgb")
CONCURRENCY = (1, 8, 32)
CEILING_CONCURRENCY = 32
START_TIMEOUT = benchkit.START_TIMEOUT


# --- load generator: benchkit's, with a check of the first answer -----------------------


def _check_first(label: str, answer: bytes) -> None:
    if not oip.ModelInferResponse.FromString(answer).outputs:
        raise RuntimeError(f"{label}: a response without outputs")


# --- echo servers: the ceiling ---------------------------------------------------------


def _canned_response() -> bytes:
    response = oip.ModelInferResponse(model_name="echo", model_version="1")
    response.outputs.add(name="probabilities", datatype="FP64", shape=[1, 2])
    response.raw_output_contents.append(np.array([[0.25, 0.75]]).tobytes())
    return response.SerializeToString()


def echo_main(kind: str, ready_file: Path) -> None:
    canned = oip.ModelInferResponse.FromString(_canned_response())
    # Both parse the request and serialize the response, as a real server must.
    benchkit.serve_echo(
        kind,
        ready_file,
        "inference.GRPCInferenceService",
        "ModelInfer",
        oip.ModelInferRequest.FromString,
        lambda request: canned,
        oip.ModelInferResponse.SerializeToString,
    )


# --- orchestration ---------------------------------------------------------------------


@dataclass
class Result(benchkit.Measurement):
    server: str
    model: str
    concurrency: int


@dataclass
class Plan:
    warmup: float
    seconds: float
    max_requests: int
    concurrency: tuple[int, ...] = CONCURRENCY
    results: list[Result] = field(default_factory=list)
    rounds: list[CeilingRound] = field(default_factory=list)


def _requests(rows: np.ndarray, model: str, output: str) -> list[str]:
    """Pre-serialized single-row requests: raw little-endian FP32, one ``[1, 10]`` input."""
    serialized = []
    for row in rows:
        request = oip.ModelInferRequest(model_name=model, model_version="1")
        request.inputs.add(name="input", datatype="FP32", shape=[1, len(row)])
        request.outputs.add(name=output)
        request.raw_input_contents.append(row.astype("<f4").tobytes())
        serialized.append(request.SerializeToString().hex())
    return serialized


def _wait_models_ready(
    address: str, models: tuple[str, ...], process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with grpc.insecure_channel(address) as channel:
        ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelReady",
            request_serializer=oip.ModelReadyRequest.SerializeToString,
            response_deserializer=oip.ModelReadyResponse.FromString,
        )
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                if all(ready(oip.ModelReadyRequest(name=m), timeout=2).ready for m in models):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.25)
    raise RuntimeError(f"{address}: models not ready after {START_TIMEOUT:.0f} s")


def _mlserver_python() -> Path:
    import sklearn

    packages = [*MLSERVER_PACKAGES, f"scikit-learn=={sklearn.__version__}"]
    return benchkit.ensure_venv(MLSERVER_VENV, packages, MLSERVER_PROBE)


def _median_seconds(predict: Any, rows: np.ndarray) -> float:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        for _ in range(20):
            predict(rows)
        times = []
        for _ in range(200):
            started = time.perf_counter()
            predict(rows)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def _train(workdir: Path) -> tuple[dict[str, Any], np.ndarray, dict[str, float]]:
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from mlbackend_serving.core.fastpath import checked_fast_proba
    from mlbackend_serving.core.model_dir import write_model_version

    x, y = make_classification(n_samples=20_000, n_features=10, n_informative=6, random_state=0)
    estimators: dict[str, Any] = {
        "rf": RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0),
        "hgb": HistGradientBoostingClassifier(random_state=0),
    }
    compute: dict[str, float] = {}
    rows = x[:256].astype(np.float32)
    for name, estimator in estimators.items():
        estimator.fit(x, y)
        write_model_version(
            workdir / "ours",
            name,
            1,
            estimator,
            FEATURES,
            input_example=x[:32].tolist(),
            batching={"max_batch_size": 32, "max_wait_ms": 0},
        )
        mls = workdir / "mlserver" / name
        mls.mkdir(parents=True)
        joblib.dump(estimator, mls / "model.joblib")
        one = rows[:1].astype(np.float64)
        compute[name] = _median_seconds(estimator.predict_proba, one)
        # What our serving runs instead (identical output; see core/fastpath.py).
        fast = checked_fast_proba(estimator, len(FEATURES), None)
        compute[f"{name}-serving"] = _median_seconds(fast, one)
    return estimators, rows, compute


def _load(plan: Plan, address: str, requests: list[str], concurrency: int) -> dict[str, Any]:
    """The load generator's command for one point: ModelInfer at ``concurrency``."""
    return {
        "address": address,
        "method": INFER,
        "check": address,
        "requests": requests,
        "concurrency": concurrency,
        "warmup": plan.warmup,
        "seconds": plan.seconds,
        "max_requests": plan.max_requests,
    }


def _measure(
    plan: Plan,
    gen: LoadGenerator,
    server: str,
    pid: int,
    address: str,
    models: dict[str, list[str]],
) -> None:
    for model, requests in models.items():
        for concurrency in plan.concurrency:
            result = Result(server, model, concurrency)
            result.take(gen.run(_load(plan, address, requests, concurrency), pid))
            plan.results.append(result)
            print(
                f"  {server:<16} {model:<4} c={concurrency:<3} {result.rps:8.0f} rps  "
                f"p50 {result.p50 * 1e3:6.2f} ms  p99 {result.p99 * 1e3:6.2f} ms  "
                f"server {result.server_cpu:.2f} cpu  client {result.client_cpu:.2f} cpu"
                + (f"  errors {result.errors} {result.note}" if result.note else ""),
                flush=True,
            )


@contextlib.contextmanager
def _ours(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Our serving on the bench's model directory, its models ready."""
    ready = workdir / "ours.ready.json"
    ready.unlink(missing_ok=True)  # started again for the ceiling rounds
    command = [
        str(MLBACKEND),
        "serve",
        "serving",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--model-dir",
        str(workdir / "ours"),
        "--ready-file",
        str(ready),
        "--data-dir",
        str(workdir / "data"),
        "--log-level",
        "WARNING",
    ]
    with server_process(command, server_env(), workdir / "ours.log") as process:
        address = wait_for_file(ready, process)["address"]
        _wait_models_ready(address, MODELS, process)
        yield process, address


def run_ours(plan: Plan, gen: LoadGenerator, workdir: Path, rows: np.ndarray) -> None:
    with _ours(workdir) as (process, address):
        models = {m: _requests(rows, m, "probabilities") for m in MODELS}
        _measure(plan, gen, "mlbackend", process.pid, address, models)


def asyncio_front_main(model_dir: Path, ready_file: Path) -> None:
    """Our serving with its all-``grpc.aio`` front (the default is the thread-pool one)."""
    from mlbackend_runtime.settings import ServerSettings
    from mlbackend_serving import app

    async def serve() -> None:
        settings = ServerSettings(
            port=0, metrics_port=0, model_dir=model_dir, data_dir=model_dir.parent / "data-aio",
            log_level="WARNING",
        )  # fmt: skip
        running = await app.create_server(settings, front="asyncio")
        await asyncio.to_thread(ready_file.write_text, json.dumps({"address": running.address}))
        await running.wait_stopped()

    asyncio.run(serve())


def run_ours_asyncio(plan: Plan, gen: LoadGenerator, workdir: Path, rows: np.ndarray) -> None:
    ready = workdir / "ours-asyncio.ready.json"
    command = [sys.executable, __file__, "--role", "serving-asyncio", "--ready-file", str(ready),
               "--model-dir", str(workdir / "ours")]  # fmt: skip
    with server_process(command, server_env(), workdir / "ours-asyncio.log") as process:
        address = wait_for_file(ready, process)["address"]
        _wait_models_ready(address, MODELS, process)
        models = {m: _requests(rows, m, "probabilities") for m in MODELS}
        _measure(plan, gen, "ours-asyncio", process.pid, address, models)


def run_mlserver(
    plan: Plan,
    gen: LoadGenerator,
    workdir: Path,
    rows: np.ndarray,
    name: str,
    batching: dict[str, Any],
) -> None:
    python = _mlserver_python()
    root = workdir / "mlserver"
    for model in MODELS:
        settings = {
            "name": model,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1"},
            **batching,
        }
        (root / model / "model-settings.json").write_text(json.dumps(settings))
    grpc_port = free_port()
    (root / "settings.json").write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "grpc_port": grpc_port,
                "http_port": free_port(),
                "metrics_port": free_port(),
            }
        )
    )
    command = [str(python.parent / "mlserver"), "start", str(root)]
    with server_process(command, server_env(), workdir / f"{name}.log") as process:
        address = f"127.0.0.1:{grpc_port}"
        _wait_models_ready(address, MODELS, process)
        models = {m: _requests(rows, m, "predict_proba") for m in MODELS}
        _measure(plan, gen, name, process.pid, address, models)


@contextlib.contextmanager
def _echo(workdir: Path, kind: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    ready = workdir / f"echo-{kind}.ready.json"
    ready.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--role", f"echo-{kind}", "--ready-file", str(ready)]
    with server_process(command, server_env(), workdir / f"echo-{kind}.log") as process:
        yield process, wait_for_file(ready, process)["address"]


def run_echo(plan: Plan, gen: LoadGenerator, workdir: Path, rows: np.ndarray, kind: str) -> None:
    with _echo(workdir, kind) as (process, address):
        _measure(
            plan,
            gen,
            f"echo-{kind}",
            process.pid,
            address,
            {"-": _requests(rows, "echo", "probabilities")},
        )


@dataclass
class CeilingRound:
    """One round of the alternated c=32 comparison: rps by point (``echo-aio``,
    ``echo-sync``, and ``mlbackend`` per model)."""

    rps: dict[str, float]

    def ratio(self, model: str) -> float:
        return self.rps[f"mlbackend {model}"] / max(self.rps["echo-aio"], self.rps["echo-sync"])


def run_ceiling_rounds(
    plan: Plan, gen: LoadGenerator, workdir: Path, rows: np.ndarray, rounds: int
) -> None:
    """Our serving and both echo servers at concurrency 32, alternated for ``rounds``
    rounds, every server up at once (an idle one costs nothing).

    The sweep measures each server once, minutes apart from the others, and the
    machine's speed drifts by 20-40 % within an hour here: one sweep's ours ÷ ceiling
    moved between 64 % and 73 % across runs of the same code. Here every round
    measures each point seconds apart (the order rotating from round to round), and
    the verdict is the median of the rounds' ratios."""
    with contextlib.ExitStack() as stack:
        points: list[tuple[str, subprocess.Popen[bytes], str, list[str]]] = []
        for kind in ("aio", "sync"):
            process, address = stack.enter_context(_echo(workdir, kind))
            points.append(
                (f"echo-{kind}", process, address, _requests(rows, "echo", "probabilities"))
            )
        process, address = stack.enter_context(_ours(workdir))
        for model in MODELS:
            points.append(
                (f"mlbackend {model}", process, address, _requests(rows, model, "probabilities"))
            )
        for number in range(rounds):
            shift = number % len(points)
            measured: dict[str, float] = {}
            for label, process, address, requests in points[shift:] + points[:shift]:
                result = Result(label, "-", CEILING_CONCURRENCY)
                command = _load(plan, address, requests, CEILING_CONCURRENCY)
                result.take(gen.run(command, process.pid))
                if result.errors or not result.rps:
                    raise RuntimeError(f"ceiling round {number}, {label}: {result.note}")
                measured[label] = result.rps
            plan.rounds.append(CeilingRound(measured))
            print(
                f"  ceiling round {number + 1}/{rounds}: "
                + "  ".join(f"{label} {rps:.0f}" for label, rps in measured.items())
                + "  ours ÷ ceiling "
                + ", ".join(f"{m} {plan.rounds[-1].ratio(m):.0%}" for m in MODELS),
                flush=True,
            )


def _best(results: list[Result], prefix: str, model: str, concurrency: int) -> Result | None:
    found = [
        r
        for r in results
        if r.server.startswith(prefix)
        and r.model in (model, "-")
        and r.concurrency == concurrency
        and r.rps > 0
        and not r.errors
    ]
    return max(found, key=lambda r: r.rps, default=None)


def report(plan: Plan, compute: dict[str, float]) -> None:
    results = plan.results
    print(
        "\nAll figures: single-row OIP v2 ModelInfer, raw FP32 [1, 10], loopback, no CPU "
        f"pinning, {os.cpu_count()} CPUs; cpu = cores busy during the measurement."
    )
    header = (
        f"{'model':<5}{'c':>3}  {'server':<16}{'rps':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'srv cpu':>8}{'cli cpu':>8}{'µs/req':>7}{'xMLS rps':>9}{'xMLS p99':>9}"
        f"{'xceiling':>9}"
    )
    print(header)
    print("-" * len(header))
    for model in MODELS:
        for c in plan.concurrency:
            mls = _best(results, "mlserver", model, c)
            ceiling = _best(results, "echo", model, c)
            rows = [r for r in results if r.model == model and r.concurrency == c]
            rows += [r for r in results if r.model == "-" and r.concurrency == c]
            for r in rows:
                per_req = r.server_cpu / r.rps * 1e6 if r.rps else float("nan")
                mls_rps = r.rps / mls.rps if mls else float("nan")
                mls_p99 = r.p99 / mls.p99 if mls else float("nan")
                ceil = r.rps / ceiling.rps if ceiling else float("nan")
                best = "*" if r is mls or r is ceiling else " "
                print(
                    f"{model:<5}{c:>3}  {r.server + best:<16}{r.rps:>8.0f}{r.p50 * 1e3:>8.2f}"
                    f"{r.p99 * 1e3:>8.2f}{r.server_cpu:>8.2f}{r.client_cpu:>8.2f}"
                    f"{per_req:>7.0f}{mls_rps:>9.2f}{mls_p99:>9.2f}{ceil:>9.2f}"
                    + (f"  ERRORS {r.errors}: {r.note}" if r.errors or r.note else "")
                )
            print()
    print("* = MLServer's best configuration / the ceiling (best echo) for that row.\n")
    print("Targets (issue #5):")
    for model in MODELS:
        ours32 = _best(results, "mlbackend", model, 32)
        mls32 = _best(results, "mlserver", model, 32)
        echo32 = _best(results, "echo", model, 32)
        ours1 = _best(results, "mlbackend", model, 1)
        echo1 = _best(results, "echo", model, 1)
        if ours32 and mls32:
            print(
                f"  {model} c=32: {ours32.rps / mls32.rps:.2f}x {mls32.server}'s rps "
                f"(target ≥ 1.5), p99 {ours32.p99 / mls32.p99:.2f}x its p99 (target ≤ 0.25)"
            )
        if ours32 and echo32:
            print(
                f"  {model} c=32: {ours32.rps / echo32.rps:.0%} of the ceiling "
                f"({echo32.server}) in the sweep (target ≥ 70 %)"
            )
        if plan.rounds:
            ratios = [r.ratio(model) for r in plan.rounds]
            print(
                f"  {model} c=32: {statistics.median(ratios):.0%} of the ceiling, median of "
                f"{len(ratios)} alternated rounds (each {min(ratios):.0%}-{max(ratios):.0%}) "
                "(target ≥ 70 %)"
            )
        if ours1 and echo1:
            for label, key in (
                ("scikit-learn", model),
                ("serving's fast path", f"{model}-serving"),
            ):
                bound = echo1.p50 + compute[key]
                print(
                    f"  {model} c=1: p50 {ours1.p50 * 1e3:.2f} ms = {ours1.p50 / bound:.2f}x "
                    f"(echo p50 {echo1.p50 * 1e3:.2f} ms + {label} {compute[key] * 1e3:.3f} ms)"
                    " (target ≤ 1.3)"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: about 2 minutes")
    parser.add_argument("--seconds", type=float, help="measurement per point (default 6, quick 2)")
    parser.add_argument(
        "--only", help="comma-separated servers: ours,ours-asyncio,mlserver,echo (default all)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="alternated c=32 rounds of ours against both echo servers (default 4, quick 2; "
        "0: none)",
    )
    benchkit.add_role_arguments(parser)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "serving-asyncio":
        return asyncio_front_main(args.model_dir, args.ready_file)
    if benchkit.run_role(args, _check_first, echo_main):
        return

    seconds = args.seconds or (2.0 if args.quick else 6.0)
    plan = Plan(warmup=0.5 if args.quick else 1.5, seconds=seconds, max_requests=500_000)
    only = set((args.only or "ours,ours-asyncio,mlserver,echo").split(","))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlbackend-bench-") as tmp:
        workdir = Path(tmp)
        _, rows, compute = _train(workdir)
        print(
            "model compute, 1 row, 1 thread: "
            + ", ".join(f"{m} {t * 1e3:.2f} ms" for m, t in compute.items()),
            flush=True,
        )
        gen = LoadGenerator(__file__)
        try:
            if "echo" in only:
                run_echo(plan, gen, workdir, rows, "aio")
                run_echo(plan, gen, workdir, rows, "sync")
            if "ours" in only:
                run_ours(plan, gen, workdir, rows)
            if "ours-asyncio" in only:
                run_ours_asyncio(plan, gen, workdir, rows)
            if "mlserver" in only:
                run_mlserver(plan, gen, workdir, rows, "mlserver", {})
                for wait in (0.001, 0.010):
                    run_mlserver(
                        plan,
                        gen,
                        workdir,
                        rows,
                        f"mlserver-ab{wait * 1e3:.0f}ms",
                        {"max_batch_size": 32, "max_batch_time": wait},
                    )
            rounds = args.rounds if args.rounds is not None else (2 if args.quick else 4)
            if rounds and {"ours", "echo"} <= only:
                run_ceiling_rounds(plan, gen, workdir, rows, rounds)
        finally:
            gen.close()
    report(plan, compute)
    print(f"\nrun took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
