"""The online store: the latest value per (view, entity), read at serving latency.

Every engine keeps the same encoded strings (see ``core/codec.py``) and the same rule:
a record replaces the stored one only if its event time is at least as new, decided
atomically by the engine itself, so concurrent or replayed writes never go back in time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from mlbackend_features.core.model import Record


class OnlineStore(ABC):
    name: str

    @abstractmethod
    async def apply(self, view: str, records: Sequence[Record], sequence: int) -> int:
        """Upsert ``records`` (newest event time wins; ties go to the later record) and
        raise the applied-sequence watermark to ``sequence``, atomically. Returns how many
        records replaced or created a value."""

    @abstractmethod
    async def read(self, view: str, entities: Sequence[str]) -> dict[str, tuple[int, str]]:
        """``entity -> (event_us, payload)`` for the entities that have a value."""

    def read_now(self, view: str, entities: Sequence[str]) -> list[tuple[int, str] | None] | None:
        """What :meth:`read` finds, per entity in the order given (None: no value), if it
        can be had without the event loop (values kept in memory, or an engine read
        synchronously); None otherwise. Any thread may call it (the thread-pool front
        reads here first)."""
        return None

    @abstractmethod
    async def applied_sequence(self) -> int:
        """The commit-log sequence up to which every batch has been applied (0 = none)."""

    @abstractmethod
    async def delete_expired(self, view: str, cutoff_us: int, limit: int) -> int:
        """Remove up to ``limit`` values of ``view`` with event time before ``cutoff_us``."""

    @abstractmethod
    async def close(self) -> None: ...
