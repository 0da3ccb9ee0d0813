"""Online values kept in process, in front of an online store.

An online read of one entity costs a few microseconds of Python but, in a loaded server,
several times that in hand-offs: the SQLite module releases the GIL for every statement
(gRPC's poller thread takes it), Redis is a round trip. Hot entities are read far more
often than they change, so each online store keeps what it read here and drops it when
it learns of a change: SQLite after this process's own writes (the only writer of its
file), Redis when Redis pushes an invalidation (``redis_pipeline``).

A reply to a read that started before a local drop is not stored (``epoch``): it may
predate the write that caused the drop.

Lookups come from any thread (the thread-pool front reads on its own threads); changes
take a lock, so a fill and a drop never interleave.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ReadCache(Generic[K, V]):
    """At most ``size`` entries (the oldest inserted go first), none older than
    ``max_age`` seconds; ``renew_age``: when an entry read is older than that, ``get``
    names it so that the caller can read it again before it expires."""

    def __init__(
        self, size: int, max_age: float = float("inf"), renew_age: float = float("inf")
    ) -> None:
        self._values: dict[K, tuple[V, float]] = {}
        self._size = size
        self._max_age = max_age
        self._renew_age = renew_age
        # Bumped by every local drop: a read started before it is not stored.
        self.epoch = 0
        self._lock = threading.Lock()

    def get(self, keys: Sequence[K], aging: list[K] | None = None) -> list[V] | None:
        """Every key's value, or None unless all of them are cached and fresh. Keys whose
        entries are older than ``renew_age`` are appended to ``aging`` (when given)."""
        values = self._values
        now = time.monotonic()
        oldest = now - self._max_age
        renew = now - self._renew_age if aging is not None else float("-inf")
        out: list[V] = []
        for key in keys:
            entry = values.get(key)
            if entry is None or entry[1] < oldest:
                return None
            if entry[1] < renew and aging is not None:
                aging.append(key)
            out.append(entry[0])
        return out

    def fill(self, keys: Sequence[K], found: Sequence[V], epoch: int) -> None:
        """Store what a read that started at ``epoch`` found, unless a drop came since."""
        values = self._values
        now = time.monotonic()
        with self._lock:
            if epoch != self.epoch:
                return
            for key, value in zip(keys, found, strict=True):
                values[key] = (value, now)
            while len(values) > self._size:
                del values[next(iter(values))]

    def drop(self, keys: Iterable[K]) -> None:
        """Forget ``keys`` after a write of this process (reads in flight are not kept)."""
        with self._lock:
            self.epoch += 1
            self._forget(keys)

    def invalidate(self, keys: Iterable[K]) -> None:
        """Forget ``keys`` without touching reads in flight (for a notice that arrives in
        order with the replies, as Redis's do)."""
        with self._lock:
            self._forget(keys)

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._values.clear()

    def _forget(self, keys: Iterable[K]) -> None:
        pop = self._values.pop
        for key in keys:
            pop(key, None)

    def __len__(self) -> int:
        return len(self._values)
