"""The ``mlbackend`` command as operators run it: real processes on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.e2e

MLBACKEND = [sys.executable, "-m", "mlbackend_cli"]
_ROW = re.compile(r"^\s+(\w+)\s+(127\.0\.0\.1:\d+)\s+(http://\S+)\s+(\d+)$")


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        if path.exists():
            info: dict[str, object] = json.loads(path.read_text())
            return info
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def _health(address: str, service: str = "") -> str:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


@pytest.fixture
def serve_registry(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, object]]]:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [*MLBACKEND, "serve", "registry", "--port", "0", "--metrics-port", "0",
         "--data-dir", str(tmp_path / "data"), "--grace-seconds", "3",
         "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield process, _wait_for(ready, process)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_sigterm_with_a_stream_open_drains_and_exits_zero(
    serve_registry: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    process, info = serve_registry
    address = str(info["address"])
    with grpc.insecure_channel(address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="mlbackend.registry.v1.ModelRegistryService")
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # Watchers learn first, so load balancers move away before the port closes.
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 3 + 2  # the grace period, plus start-up slack


def test_metrics_port_serves_prometheus_text(
    serve_registry: tuple[subprocess.Popen[str], dict[str, object]],
) -> None:
    import urllib.request

    _, info = serve_registry
    url = f"http://127.0.0.1:{info['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert "# TYPE mlbackend_rpc_requests_total counter" in text
    assert 'mlbackend_server_info{service="registry"} 1.0' in text


def test_non_loopback_bind_without_tls_and_auth_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [*MLBACKEND, "serve", "registry", "--host", "0.0.0.0", "--port", "0",
         "--metrics-port", "0", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0 without TLS and auth" in result.stderr


def test_invalid_settings_are_reported_not_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [*MLBACKEND, "serve", "registry", "--tls-cert", str(tmp_path / "x.crt")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "tls_cert and tls_key must be given together" in result.stderr
    assert "Traceback" not in result.stderr


def _start_up(tmp_path: Path) -> tuple[subprocess.Popen[str], dict[str, tuple[str, int]]]:
    process = subprocess.Popen(
        [*MLBACKEND, "up", "--ephemeral-ports", "--data-dir", str(tmp_path / "data"),
         "--grace-seconds", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, as a shell gives a command
    )  # fmt: skip
    assert process.stdout is not None
    services: dict[str, tuple[str, int]] = {}
    deadline = time.monotonic() + 60
    for line in process.stdout:
        match = _ROW.match(line.rstrip("\n"))
        if match:
            services[match.group(1)] = (match.group(2), int(match.group(4)))
        if len(services) == 5 or time.monotonic() > deadline:
            break
    return process, services


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
def test_up_runs_the_suite_and_stops_cleanly(tmp_path: Path, how: str) -> None:
    process, services = _start_up(tmp_path)
    try:
        assert set(services) == {"registry", "features", "monitoring", "serving", "gateway"}
        for name, (address, _) in services.items():
            assert _health(address) == "SERVING", name
        if how == "sigterm":
            process.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C: SIGINT to the foreground process group
            os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=20) == 0
        for _, pid in services.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        # Callers stop first: the gateway's last records reach monitoring, serving leaves
        # the registry's watch before the registry goes.
        _, stderr = process.communicate(timeout=10)
        order = re.findall(r"(\w+): shutting down", stderr)
        assert sorted(order) == sorted(services)
        assert order[0] == "gateway" and order[-1] == "registry"
        assert order.index("serving") < order.index("monitoring")
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_services_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    process, services = _start_up(tmp_path)
    try:
        process.kill()  # kill -9: the supervisor stops nothing itself
        process.wait(timeout=10)
        deadline = time.monotonic() + 15
        alive = [pid for _, pid in services.values()]
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if _running(pid)]
            time.sleep(0.1)
        assert alive == []
    finally:
        for _, pid in services.values():
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        process.communicate(timeout=10)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_up_reports_a_child_that_dies_and_stops_the_rest(tmp_path: Path) -> None:
    process, services = _start_up(tmp_path)
    try:
        os.kill(services["features"][1], signal.SIGKILL)
        assert process.wait(timeout=20) == 1
        _, stderr = process.communicate(timeout=10)
        assert "features died (exit code -9); stopping the others" in stderr
        for name, (_, pid) in services.items():
            if name != "features":
                with pytest.raises(ProcessLookupError):
                    os.kill(pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
