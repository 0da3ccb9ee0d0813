"""A throwaway PostgreSQL server for tests: initdb into a temp dir, run on a free loopback port.

Finds ``initdb``/``postgres`` under ``/usr/lib/postgresql/*/bin`` (newest first) or on
PATH. When running as root both run as the ``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest


def find_bin_dir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "postgres").exists():
            return Path(directory)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return Path(initdb).parent
    return None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="mlbackend-pg-"))
        self.data = self.base / "data"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        return [*prefix, *args]

    def start(self, attempts: int = 8) -> None:
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        self.base.chmod(0o755)
        subprocess.run(
            self._cmd(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        last_log = ""
        for _ in range(attempts):
            self.port = random.randint(20000, 60000)
            log = self.base / f"postgres-{self.port}.log"
            with log.open("wb") as out:
                self._process = subprocess.Popen(
                    self._cmd(
                        str(self.bin_dir / "postgres"),
                        "-D",
                        str(self.data),
                        "-k",
                        str(self.base),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(self.port),
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready():
                return
            last_log = log.read_text(errors="replace")
            self.stop_process()
        raise RuntimeError(f"PostgreSQL did not start:\n{last_log}")

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False  # e.g. the port was taken: the caller retries another
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop_process(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # SIGTERM: smart shutdown
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def stop(self) -> None:
        self.stop_process()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL for the session; missing binaries fail in CI, skip elsewhere.

    Import it into a test module or conftest: ``from pg_server import postgres``.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL server binaries (initdb, postgres) not found"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()
