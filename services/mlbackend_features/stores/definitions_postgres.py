"""Feature definitions in PostgreSQL, shared by every replica of the feature store.

Tables are prefixed ``feature_def_`` so they can live in the registry's database. An
apply is planned against what a replica loaded; ``save`` checks, under a transaction
lock, that each entity and view is still at the revision the plan started from and
that no other replica took the service version, else the apply is refused with
``Aborted`` and the caller retries against the fresh definitions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mlbackend_features.core.model import Entity, FeatureService, FeatureView
from mlbackend_features.stores.definitions import Definitions, DefinitionStore, decode
from mlbackend_features.stores.offline_postgres import COMMIT_LOCK, create_schema
from mlbackend_runtime.errors import Aborted, DependencyUnavailable
from mlbackend_runtime.sql import in_transaction, refuse_nul_text, sqlalchemy_url

T = TypeVar("T")
APPLY_LOCK = COMMIT_LOCK + 2

metadata = sa.MetaData()

entities_table = sa.Table(
    "feature_def_entities",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)

views_table = sa.Table(
    "feature_def_views",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)

services_table = sa.Table(
    "feature_def_services",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("body", sa.Text, nullable=False),
)


class PostgresDefinitionStore(DefinitionStore):
    def __init__(self, database_url: str) -> None:
        self._engine = sa.create_engine(
            sqlalchemy_url(database_url), pool_pre_ping=True, pool_size=2
        )
        refuse_nul_text(self._engine)
        try:
            create_schema(self._engine, metadata)
        except sa.exc.OperationalError as exc:
            self._engine.dispose()
            raise DependencyUnavailable("definition-store", str(exc.orig)) from None

    async def _run(self, work: Callable[[Connection], T]) -> T:
        return await in_transaction(self._engine, "definition-store", work)

    async def load(self) -> Definitions:
        def work(conn: Connection) -> Definitions:
            services = sa.select(services_table.c.name, services_table.c.body)
            return decode(
                conn.execute(sa.select(entities_table.c.name, entities_table.c.body)),
                conn.execute(sa.select(views_table.c.name, views_table.c.body)),
                conn.execute(services.order_by(services_table.c.name, services_table.c.version)),
            )

        return await self._run(work)

    async def save(
        self,
        entities: Sequence[Entity],
        views: Sequence[FeatureView],
        services: Sequence[FeatureService],
    ) -> None:
        def work(conn: Connection) -> None:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": APPLY_LOCK})
            for entity in entities:
                _replace(conn, entities_table, "entity", entity)
            for view in views:
                _replace(conn, views_table, "feature view", view)
            for service in services:
                taken = conn.execute(
                    sa.select(sa.func.count()).where(
                        services_table.c.name == service.name,
                        services_table.c.version >= service.version,
                    )
                ).scalar_one()
                if taken:
                    raise _concurrent(f"feature service {service.name!r}")
                conn.execute(
                    services_table.insert().values(
                        name=service.name, version=service.version, body=service.model_dump_json()
                    )
                )

        await self._run(work)

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)


def _replace(conn: Connection, table: sa.Table, kind: str, item: Entity | FeatureView) -> None:
    """Store ``item`` if the stored revision is the one its new revision follows."""
    name, revision, body = item.name, item.revision, item.model_dump_json()
    stored = conn.execute(sa.select(table.c.revision).where(table.c.name == name)).scalar()
    if (stored or 0) != revision - 1:
        raise _concurrent(f"{kind} {name!r}")
    if stored is None:
        conn.execute(table.insert().values(name=name, revision=revision, body=body))
    else:
        conn.execute(
            table.update().where(table.c.name == name).values(revision=revision, body=body)
        )


def _concurrent(what: str) -> Aborted:
    return Aborted(f"{what} was changed by another apply meanwhile; apply again")
