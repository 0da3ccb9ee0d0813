"""Feature definitions (entities, views, feature service versions): the interface and
its SQLite engine (embedded default); ``definitions_postgres.py`` shares them between
replicas.

Each definition is stored as the JSON of its domain model; an apply writes all of its
changes in one transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from mlbackend_features.core.model import Entity, FeatureService, FeatureView
from mlbackend_features.stores.sqlite_db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feature_views (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feature_services (
    name TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
"""


class Definitions(NamedTuple):
    entities: dict[str, Entity]
    views: dict[str, FeatureView]
    services: dict[str, list[FeatureService]]
    """Every version per name, ascending."""


class DefinitionStore(ABC):
    @abstractmethod
    async def load(self) -> Definitions:
        """Every stored definition."""

    @abstractmethod
    async def save(
        self,
        entities: Sequence[Entity],
        views: Sequence[FeatureView],
        services: Sequence[FeatureService],
    ) -> None:
        """Store one apply's changes, all or nothing. Entities and views carry their new
        revision, services their new version; a store shared by replicas refuses the
        apply (``Aborted``) when another one stored a revision or version in between."""

    @abstractmethod
    async def close(self) -> None: ...


def decode(
    entities: Iterable[tuple[str, str]],
    views: Iterable[tuple[str, str]],
    services: Iterable[tuple[str, str]],
) -> Definitions:
    """Definitions from stored (name, JSON body) rows; services in version order."""
    by_name: dict[str, list[FeatureService]] = {}
    for name, body in services:
        by_name.setdefault(name, []).append(FeatureService.model_validate_json(body))
    return Definitions(
        {name: Entity.model_validate_json(body) for name, body in entities},
        {name: FeatureView.model_validate_json(body) for name, body in views},
        by_name,
    )


class SqliteDefinitionStore(DefinitionStore):
    def __init__(self, path: Path) -> None:
        self._db = Database(path, "FULL")
        self._db.run(lambda c: c.executescript(_SCHEMA))

    async def load(self) -> Definitions:
        def work(conn: sqlite3.Connection) -> Definitions:
            return decode(
                conn.execute("SELECT name, body FROM entities"),
                conn.execute("SELECT name, body FROM feature_views"),
                conn.execute("SELECT name, body FROM feature_services ORDER BY name, version"),
            )

        return await asyncio.to_thread(self._db.run, work)

    async def save(
        self,
        entities: Sequence[Entity],
        views: Sequence[FeatureView],
        services: Sequence[FeatureService],
    ) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR REPLACE INTO entities (name, body) VALUES (?, ?)",
                [(e.name, e.model_dump_json()) for e in entities],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO feature_views (name, body) VALUES (?, ?)",
                [(v.name, v.model_dump_json()) for v in views],
            )
            conn.executemany(
                "INSERT INTO feature_services (name, version, body) VALUES (?, ?, ?)",
                [(s.name, s.version, s.model_dump_json()) for s in services],
            )

        await asyncio.to_thread(self._db.transaction, work)

    async def close(self) -> None:
        self._db.close()
