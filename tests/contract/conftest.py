"""Store fixtures: every contract test runs on SQLite (file, WAL) and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_server import PostgresServer, postgres

from mlbackend_registry.stores.sqlalchemy_store import SqlAlchemyStore, engine_url

BACKENDS = ["sqlite", "postgresql"]
__all__ = ["postgres"]  # the session fixture, re-exported for pytest


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty registry database on each backend."""
    if request.param == "sqlite":
        return engine_url(None, tmp_path)
    server: PostgresServer = request.getfixturevalue("postgres")
    return engine_url(server.create_database(), tmp_path)


@pytest.fixture
def store(database_url: str) -> Iterator[SqlAlchemyStore]:
    store = SqlAlchemyStore(database_url)
    store.migrate()
    yield store
    store.close()
