"""Opening SQLite databases the way every feature-store table expects."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")


class Database:
    """One connection guarded by a lock; blocking work runs in a worker thread.

    ``synchronous`` is FULL for the commit log (an acknowledged batch survives power
    loss, not only a crash of the process) and NORMAL where the data can be rebuilt.
    """

    def __init__(self, path: Path, synchronous: Literal["FULL", "NORMAL"]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return work(self._conn)

    def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` inside BEGIN IMMEDIATE … COMMIT; rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._conn.close()
