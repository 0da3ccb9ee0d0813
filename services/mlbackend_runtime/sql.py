"""What every SQLAlchemy-backed store shares: the database URL, and a transaction run
off the event loop whose connection failures name the store as an unavailable dependency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext

from mlbackend_runtime.errors import DependencyUnavailable, InvalidInput

T = TypeVar("T")

_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


def is_postgres_url(database_url: str | None) -> bool:
    """Whether ``database_url`` (the ``--db`` setting) names a PostgreSQL database."""
    return database_url is not None and database_url.split(":", 1)[0] in _POSTGRES_SCHEMES


def sqlalchemy_url(database_url: str) -> str:
    """The SQLAlchemy URL of a ``postgresql://`` URL, on the psycopg 3 driver; any other
    URL unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


async def in_transaction(engine: sa.Engine, dependency: str, work: Callable[[Connection], T]) -> T:
    """``work`` in one transaction on a worker thread; a connection failure becomes
    :class:`DependencyUnavailable` naming ``dependency``."""

    def transaction() -> T:
        try:
            with engine.begin() as connection:
                return work(connection)
        except sa.exc.OperationalError as exc:
            raise DependencyUnavailable(dependency, str(exc.orig)) from None

    return await asyncio.to_thread(transaction)


def refuse_nul_text(engine: sa.Engine) -> None:
    """A request whose text holds a NUL (0x00) character is INVALID_ARGUMENT on
    ``engine``. PostgreSQL stores no NUL in text, and psycopg refuses such a parameter
    before sending it (a ``DataError`` that would otherwise surface as INTERNAL); any
    string of a request reaches the database that way (a description, a tag, a reason,
    a name prefix). SQLite stores them as they are."""
    event.listen(engine, "handle_error", _refused_nul)


def _refused_nul(context: ExceptionContext) -> None:
    if isinstance(context.sqlalchemy_exception, sa.exc.DataError) and "NUL (0x00)" in str(
        context.original_exception
    ):
        raise InvalidInput.field("request", "text may not contain NUL (0x00) characters")
