"""``mlbackend up``: the suite as one child process per service (``demo`` uses it too).

The supervisor starts the services in dependency order, learns each one's bound
ports from its ready file, passes those addresses to the services that call it,
and stops them all, callers first, on Ctrl-C, SIGTERM or SIGHUP. A child that dies
is reported with its exit code and the rest of the suite is stopped: nothing keeps
running half-broken.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from mlbackend_cli import catalog

START_TIMEOUT_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_FLAG_FOR = {
    "host": "--host",
    "data_dir": "--data-dir",
    "token_file": "--token-file",
    "log_format": "--log-format",
    "log_level": "--log-level",
    "grace_seconds": "--grace-seconds",
}


class SuiteError(RuntimeError):
    """A service failed to start or died; the message names it."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    info: dict[str, Any] | None = None

    @property
    def address(self) -> str:
        assert self.info is not None
        return str(self.info["address"])

    @property
    def metrics_url(self) -> str:
        assert self.info is not None
        return str(self.info["metrics_url"])


class Suite:
    def __init__(
        self,
        settings: Mapping[str, Any],
        ephemeral_ports: bool,
        workdir: Path,
        extra_args: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._settings = dict(settings)
        self._extra_args = dict(extra_args or {})
        self._ephemeral = ephemeral_ports
        self._workdir = workdir
        self.children: dict[str, Child] = {}
        self.grace = float(self._settings.get("grace_seconds", 20.0))

    def start(self) -> None:
        """Start every service, dependencies first; raises :class:`SuiteError`."""
        Path(self._settings.get("data_dir", "data")).mkdir(parents=True, exist_ok=True)
        pending = list(catalog.SERVICES)
        while pending:
            wave = [n for n in pending if all(d in self.children for d in catalog.DEPENDENCIES[n])]
            for name in wave:
                self.children[name] = self._spawn(name)
            for name in wave:
                self._wait_ready(self.children[name])
                pending.remove(name)

    def _spawn(self, name: str) -> Child:
        ready_file = self._workdir / f"{name}.json"
        command = [sys.executable, "-m", "mlbackend_cli", "serve", name]
        command += ["--ready-file", str(ready_file)]
        for key, flag in _FLAG_FOR.items():
            if self._settings.get(key) is not None:
                command += [flag, str(self._settings[key])]
        if self._ephemeral:
            command += ["--port", "0", "--metrics-port", "0"]
            if name == "gateway":
                command += ["--http-port", "0"]
        for dependency in catalog.DEPENDENCIES[name]:
            command += [f"--{dependency}", self.children[dependency].address]
        command += self._extra_args.get(name, ())
        env = dict(os.environ)
        if self._settings.get("token") is not None:
            env["MLBACKEND_TOKEN"] = str(self._settings["token"])  # not on the command line
        # Each child leads a process group of its own: a terminal's Ctrl-C reaches only
        # the supervisor, which stops the children callers first (see stop()). A child
        # gets SIGTERM if the supervisor dies without stopping it (kill -9).
        process = subprocess.Popen(
            command, env=env, process_group=0, preexec_fn=_terminate_with_parent
        )
        return Child(name, process, ready_file)

    def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            code = child.process.poll()
            if code is not None:
                raise SuiteError(f"{child.name} exited with code {code} while starting")
            if child.ready_file.exists():
                child.info = json.loads(child.ready_file.read_text())
                return
            time.sleep(0.05)
        raise SuiteError(f"{child.name} did not become ready in {START_TIMEOUT_SECONDS:.0f} s")

    def dead_child(self) -> Child | None:
        return next((c for c in self.children.values() if c.process.poll() is not None), None)

    def stop(self) -> dict[str, int]:
        """Stop the children callers first: SIGTERM to every service nothing still running
        calls, wait for them (stragglers get SIGKILL after the grace period), then the
        next. So the gateway's last prediction records reach monitoring, and serving
        leaves the registry's watch before the registry goes."""
        codes: dict[str, int] = {}
        running = list(self.children)
        while running:
            called = {d for name in running for d in catalog.DEPENDENCIES[name]}
            wave = [self.children[n] for n in running if n not in called]
            for child in wave:
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace + 5
            for child in wave:
                try:
                    codes[child.name] = child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    codes[child.name] = child.process.wait()
                running.remove(child.name)
        return {name: codes[name] for name in self.children}

    def table(self) -> str:
        rows = [("service", "gRPC", "metrics", "pid")]
        for child in self.children.values():
            rows.append((child.name, child.address, child.metrics_url, str(child.process.pid)))
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [
            "  " + "  ".join(f"{cell:<{width[i]}}" for i, cell in enumerate(r[:3])) + "  " + r[3]
            for r in rows
        ]
        gateway = self.children.get("gateway")
        if gateway is not None and gateway.info and gateway.info.get("http_port"):
            host = gateway.address.rsplit(":", 1)[0]
            lines.append(
                f"  gateway JSON/HTTP: http://{host}:{gateway.info['http_port']}/v1/models"
            )
        return "\n".join(lines)


def _terminate_with_parent() -> None:
    """Between fork and exec in the child: SIGTERM when the parent dies (Linux; a no-op
    elsewhere). One prctl call; children are started before any thread is (start())."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed
    previous = {s: signal.signal(s, request_stop) for s in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report_stop(codes: Mapping[str, int]) -> int:
    failed = {name: code for name, code in codes.items() if code != 0}
    for name, code in failed.items():
        print(f"mlbackend: {name} exited with code {code}", file=sys.stderr)
    return 1 if failed else 0


def run_up(settings: Mapping[str, Any], *, ephemeral_ports: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="mlbackend-up-") as tmp, _stop_on_signals() as stop:
        suite = Suite(settings, ephemeral_ports, Path(tmp))
        try:
            suite.start()
        except SuiteError as exc:
            print(f"mlbackend up: {exc}; stopping the others", file=sys.stderr)
            suite.stop()
            return 1
        print("mlbackend is up:\n" + suite.table(), flush=True)
        print("Ctrl-C stops every service.", flush=True)
        while not stop.wait(0.2):
            dead = suite.dead_child()
            if dead is not None:
                code = dead.process.returncode
                print(f"mlbackend up: {dead.name} died (exit code {code}); stopping the others",
                      file=sys.stderr)  # fmt: skip
                suite.stop()
                return 1
        print("mlbackend: stopping…", flush=True)
        return report_stop(suite.stop())
