"""What the benchmarks under ``bench/`` share: processes, CPU accounting, load, echo.

Imported by ``bench/<name>/run.py`` after it puts ``bench/`` on ``sys.path``. Only the
standard library and grpcio at import time, so the same load generator runs in any
venv that has grpcio.

* :func:`server_process`: a server as its own process group, stopped on exit;
* :func:`tree_cpu`: CPU seconds of a process and its descendants (``/proc``);
* :class:`LoadGenerator`: one separate load-generator process (``run.py --role
  loadgen``) driven by one JSON command a line; :func:`loadgen_main` is its side:
  closed-loop gRPC (bytes in, bytes out) or HTTP/1.1 keep-alive workers, bounded by a
  duration and a request count;
* :func:`serve_echo`: a bare ``grpc.aio`` or sync ``grpc.server`` that parses the
  request and answers a canned response: the ceiling for Python gRPC here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

START_TIMEOUT = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BENCH_CACHE = Path(os.environ.get("MLBACKEND_BENCH_CACHE", Path.home() / ".cache/mlbackend-bench"))

# --- processes ---------------------------------------------------------------------------


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every descendant process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        todo.extend(children.get(current, []))
    return total


@contextmanager
def server_process(
    command: Sequence[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` in its own process group; SIGTERM (then SIGKILL) the group on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("VIRTUAL_ENV", None)
    return env


def free_port() -> int:
    """A port that was free a moment ago (for servers that take fixed ports only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The JSON a server writes once it listens (its ``--ready-file``)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        if path.exists() and path.stat().st_size:
            try:
                info: dict[str, Any] = json.loads(path.read_text())
                return info
            except json.JSONDecodeError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"no ready file {path} after {START_TIMEOUT:.0f} s")


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until something accepts TCP connections on loopback ``port``."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {START_TIMEOUT:.0f} s")


def ensure_venv(path: Path, packages: Sequence[str], probe: str) -> Path:
    """The python of a venv at ``path`` where ``probe`` runs; (re)installed if it does not."""
    python = path / "bin" / "python"
    probed = python.exists() and subprocess.run([python, "-c", probe], capture_output=True)
    if probed and probed.returncode == 0:
        return python
    print(f"installing {' '.join(packages)} into {path} …", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *packages], check=True, timeout=900)
    return python


def py_spy() -> Path:
    """The py-spy executable: the one installed beside this python (`.[dev]`), else one in a
    venv of its own under the bench cache (installed on first use)."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return beside
    return ensure_venv(BENCH_CACHE / "py-spy", ["py-spy"], "import sys").parent / "py-spy"


# --- load generator (its own process; reads one JSON command a line) ----------------------

Check = Callable[[str, bytes], None]


class _HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; a request at a time; reconnects when closed."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        if not self._waiter.done():
            self._waiter.set_result((int(head[0].split()[1]), body))

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def post(self, request: bytes) -> tuple[int, bytes]:
        assert self._transport is not None
        self._buffer.clear()
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _http_request(port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def _load(command: dict[str, Any], check: Check | None) -> dict[str, Any]:
    """Closed loop: ``concurrency`` workers send the requests round robin; one measurement."""
    kind: str = command.get("kind", "grpc")
    bodies: list[bytes] = [bytes.fromhex(r) for r in command["requests"]]
    concurrency: int = command["concurrency"]
    errors: list[str] = []
    reconnects = 0
    channel: grpc.aio.Channel | None = None
    connections: list[_HttpConnection] = []
    if kind == "grpc":
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        channel = grpc.aio.insecure_channel(command["address"], options=options)
        # bytes in, bytes out: no protobuf work in the client's hot loop
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            command["method"]
        )

        async def send(worker: int, body: bytes) -> bytes:
            answer: bytes = await call(body, timeout=10)
            return answer

    else:
        port: int = command["port"]
        bodies = [_http_request(port, command["path"], b) for b in bodies]
        loop = asyncio.get_running_loop()

        async def connect(worker: int) -> None:
            _, protocol = await loop.create_connection(_HttpConnection, "127.0.0.1", port)
            connections[worker] = protocol

        async def send(worker: int, body: bytes) -> bytes:
            nonlocal reconnects
            for attempt in range(2):
                if not connections[worker].open:
                    reconnects += 1
                    await connect(worker)
                try:
                    status, answer = await connections[worker].post(body)
                except ConnectionResetError:
                    if attempt:
                        raise
                    continue
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {answer[:200]!r}")
                return answer
            raise AssertionError("unreachable")

        connections = [_HttpConnection() for _ in range(concurrency)]
        for w in range(concurrency):
            await connect(w)
    try:
        first = await send(0, bodies[0])
        if check is not None:
            check(command.get("check", ""), first)

        async def phase(seconds: float, max_requests: int) -> list[float]:
            latencies: list[float] = []
            end = time.perf_counter() + seconds
            sent = 0

            async def worker(w: int) -> None:
                nonlocal sent
                i = w * 7
                while sent < max_requests and time.perf_counter() < end:
                    sent += 1
                    i += 1
                    started = time.perf_counter()
                    try:
                        await send(w, bodies[i % len(bodies)])
                    except (grpc.aio.AioRpcError, OSError, RuntimeError) as exc:
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                        continue
                    latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            return latencies

        await phase(command["warmup"], command["max_requests"])
        errors.clear()
        reconnects = 0
        _emit({"event": "measuring"})
        cpu, wall = time.process_time(), time.perf_counter()
        latencies = await phase(command["seconds"], command["max_requests"])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        if channel is not None:
            await channel.close()
        for connection in connections:
            connection.close()
    gaps = sorted(latencies, reverse=True)
    latencies.sort()
    n = len(latencies)
    return {
        "event": "done",
        "requests": n,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "reconnects": reconnects,
        "seconds": wall,
        "rps": n / wall,
        "p50": latencies[n // 2] if n else float("nan"),
        "p99": latencies[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "max": gaps[0] if n else float("nan"),
        "client_cpu": cpu / wall,
    }


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def loadgen_main(check: Check | None = None) -> None:
    """The load generator's side: one JSON command a line in, JSON events out.

    ``check(label, first_response)`` may refuse a server's first answer (raise)."""
    for line in sys.stdin:
        try:
            _emit(asyncio.run(_load(json.loads(line), check)))
        except Exception as exc:  # reported to the orchestrator, which goes on
            _emit({"event": "failed", "error": f"{type(exc).__name__}: {exc}"})


@dataclass(kw_only=True)
class Measurement:
    """One load point's figures; a benchmark's result type adds what the point was."""

    rps: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    worst: float = float("nan")
    server_cpu: float = float("nan")
    client_cpu: float = float("nan")
    errors: int = 0
    reconnects: int = 0
    note: str = ""

    def take(self, out: dict[str, Any]) -> None:
        """Fill from a :meth:`LoadGenerator.run` answer (``done`` or ``failed``)."""
        if out["event"] != "done":
            self.note = out.get("error", "failed")
            return
        self.rps, self.p50, self.p99, self.worst = out["rps"], out["p50"], out["p99"], out["max"]
        # A worker that exits mid-measurement (gunicorn's --max-requests) takes its CPU
        # time out of the process tree: no figure then rather than a wrong one.
        self.server_cpu = out["server_cpu"] if out["server_cpu"] > 0 else float("nan")
        self.client_cpu, self.reconnects = out["client_cpu"], out["reconnects"]
        self.errors, self.note = out["errors"], out["first_error"]


class LoadGenerator:
    """The orchestrator's side: runs ``script --role loadgen`` once and sends it commands."""

    def __init__(self, script: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, script, "--role", "loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, command: dict[str, Any], server_pid: int) -> dict[str, Any]:
        """One measurement; adds ``server_cpu`` (cores busy in the server's process tree)."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        cpu, wall = float("nan"), time.perf_counter()
        while True:
            line = self._process.stdout.readline()
            if not line:
                raise RuntimeError("the load generator died")
            message: dict[str, Any] = json.loads(line)
            if message["event"] == "measuring":
                cpu, wall = tree_cpu(server_pid), time.perf_counter()
            elif message["event"] == "done":
                message["server_cpu"] = (tree_cpu(server_pid) - cpu) / (time.perf_counter() - wall)
                return message
            else:
                return message

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=10)


# --- the roles a benchmark's run.py plays in its child processes ------------------------


def add_role_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)


def run_role(
    args: argparse.Namespace, check: Check | None, echo: Callable[[str, Path], None]
) -> bool:
    """Play ``--role loadgen`` or ``--role echo-aio|echo-sync``; False for the orchestrator."""
    if args.role == "loadgen":
        loadgen_main(check)
        return True
    if args.role in ("echo-aio", "echo-sync"):
        echo(args.role.removeprefix("echo-"), args.ready_file)
        return True
    return False


# --- echo servers: the ceiling -----------------------------------------------------------


def serve_echo(
    kind: str,
    ready_file: Path,
    service: str,
    method: str,
    decode: Callable[[bytes], Any],
    respond: Callable[[Any], Any],
    encode: Callable[[Any], bytes],
) -> None:
    """Serve ``/service/method`` until killed: parse the request, answer ``respond(request)``.

    ``kind`` is ``aio`` (``grpc.aio.server``) or ``sync`` (``grpc.server``, 64 threads);
    writes ``{"address": ...}`` to ``ready_file`` once listening on a loopback port."""
    if kind == "sync":

        def answer_sync(request: Any, context: Any) -> Any:
            return respond(request)

        handler = grpc.unary_unary_rpc_method_handler(answer_sync, decode, encode)
        generic = grpc.method_handlers_generic_handler(service, {method: handler})
        server = grpc.server(ThreadPoolExecutor(max_workers=64), handlers=[generic])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        ready_file.write_text(json.dumps({"address": f"127.0.0.1:{port}"}))
        server.wait_for_termination()
        return

    async def serve() -> None:
        async def answer(request: Any, context: Any) -> Any:
            return respond(request)

        handler = grpc.unary_unary_rpc_method_handler(answer, decode, encode)
        generic = grpc.method_handlers_generic_handler(service, {method: handler})
        aio_server = grpc.aio.server()
        aio_server.add_generic_rpc_handlers([generic])
        port = aio_server.add_insecure_port("127.0.0.1:0")
        await aio_server.start()
        address = json.dumps({"address": f"127.0.0.1:{port}"})
        await asyncio.to_thread(ready_file.write_text, address)
        await aio_server.wait_for_termination()

    asyncio.run(serve())
