"""A throwaway real ``redis-server`` on a free loopback port, for contract tests.

No persistence (``--save '' --appendonly no``): every test run starts empty. A missing
binary fails the run in CI (``CI=true``) and skips elsewhere.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def require_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server not found on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server(attempts: int = 10) -> Iterator[str]:
    """Start a redis-server, yield its ``redis://`` URL, stop it afterwards."""
    binary = require_binary()
    for _ in range(attempts):
        port = random.randint(20_000, 60_000)
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            if _ping(port):
                break
            time.sleep(0.02)
        if process.poll() is None and _ping(port):
            try:
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            return
        # Port taken (or a slow start): try another one.
        process.kill()
        process.wait()
    raise RuntimeError(f"could not start redis-server after {attempts} attempts")
