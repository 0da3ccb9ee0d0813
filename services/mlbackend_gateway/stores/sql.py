"""Experiments on SQLAlchemy Core: SQLite (WAL, embedded default) or PostgreSQL.

"At most one running experiment per model" is a partial unique index, so two replicas
creating experiments for the same model at once cannot both succeed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Row

from mlbackend_gateway.core.experiments import (
    Experiment,
    ExperimentPage,
    ExperimentState,
    Variant,
)
from mlbackend_gateway.core.model import VersionSelector
from mlbackend_runtime.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
)
from mlbackend_runtime.sql import in_transaction, refuse_nul_text, sqlalchemy_url

T = TypeVar("T")

metadata = sa.MetaData()

experiments = sa.Table(
    "gateway_experiments",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("salt", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("variants", sa.Text, nullable=False),
    sa.Column("shadow_variants", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("stopped_at", sa.BigInteger, nullable=True),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("stop_reason", sa.Text, nullable=False),
    sa.Index("ix_gateway_experiments_created", "created_at", "name"),
    sa.Index(
        "ux_gateway_experiments_running_model",
        "model",
        unique=True,
        sqlite_where=sa.text("state = 'running'"),
        postgresql_where=sa.text("state = 'running'"),
    ),
)


def engine_url(database_url: str | None, data_dir: Path) -> str:
    """PostgreSQL (psycopg 3) when a URL is given, else SQLite under ``data_dir``."""
    if database_url is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{data_dir / 'experiments.sqlite'}"
    return sqlalchemy_url(database_url)


def _micros(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def _time(micros: int | None) -> datetime | None:
    return None if micros is None else datetime.fromtimestamp(micros / 1_000_000, UTC)


def _variants_json(variants: tuple[Variant, ...]) -> str:
    return json.dumps(
        [
            {
                "name": v.name,
                "version": v.version.version,
                "alias": v.version.alias,
                "weight": v.weight,
            }
            for v in variants
        ]
    )


def _variants(text: str) -> tuple[Variant, ...]:
    return tuple(
        Variant(d["name"], VersionSelector(d.get("version"), d.get("alias")), d.get("weight", 0))
        for d in json.loads(text)
    )


def _experiment(row: Row[Any]) -> Experiment:
    """The one place a row becomes an experiment."""
    return Experiment(
        name=row.name,
        model=row.model,
        variants=_variants(row.variants),
        shadow_variants=_variants(row.shadow_variants),
        salt=row.salt,
        state=ExperimentState(row.state),
        description=row.description,
        create_time=_time(row.created_at),
        stop_time=_time(row.stopped_at),
        created_by=row.created_by,
        stop_reason=row.stop_reason,
    )


class SqlExperimentStore:
    def __init__(self, url: str) -> None:
        self._sqlite = url.startswith("sqlite")
        if self._sqlite:
            self._engine = sa.create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}
            )
            event.listen(self._engine, "connect", _sqlite_pragmas)
        else:
            self._engine = sa.create_engine(url, pool_pre_ping=True, pool_size=5)
            refuse_nul_text(self._engine)
        metadata.create_all(self._engine)

    async def _run(self, work: Callable[[Connection], T]) -> T:
        return await in_transaction(self._engine, "experiment-store", work)

    async def create(self, experiment: Experiment) -> Experiment:
        assert experiment.create_time is not None

        def work(connection: Connection) -> Experiment:
            _check_free(connection, experiment)
            connection.execute(
                experiments.insert().values(
                    name=experiment.name,
                    model=experiment.model,
                    state=experiment.state.value,
                    salt=experiment.salt,
                    description=experiment.description,
                    variants=_variants_json(experiment.variants),
                    shadow_variants=_variants_json(experiment.shadow_variants),
                    created_at=_micros(experiment.create_time),  # type: ignore[arg-type]
                    stopped_at=None,
                    created_by=experiment.created_by,
                    stop_reason="",
                )
            )
            return _get(connection, experiment.name)

        try:
            return await self._run(work)
        except sa.exc.IntegrityError:
            # Lost a race with another replica: say which rule it broke.
            await self._run(lambda connection: _check_free(connection, experiment))
            raise FailedPrecondition(
                f"model {experiment.model!r} already has a running experiment"
            ) from None

    async def get(self, name: str) -> Experiment:
        return await self._run(lambda connection: _get(connection, name))

    async def running_for(self, model: str) -> Experiment | None:
        def work(connection: Connection) -> Experiment | None:
            row = connection.execute(
                experiments.select().where(
                    experiments.c.model == model, experiments.c.state == "running"
                )
            ).first()
            return None if row is None else _experiment(row)

        return await self._run(work)

    async def list(
        self, model: str, state: ExperimentState | None, page_size: int, page_token: str
    ) -> ExperimentPage:
        after = _parse_token(page_token)

        def work(connection: Connection) -> ExperimentPage:
            query = experiments.select()
            if model:
                query = query.where(experiments.c.model == model)
            if state is not None:
                query = query.where(experiments.c.state == state.value)
            if after is not None:
                created, name = after
                query = query.where(
                    sa.or_(
                        experiments.c.created_at < created,
                        sa.and_(experiments.c.created_at == created, experiments.c.name < name),
                    )
                )
            query = query.order_by(
                experiments.c.created_at.desc(), experiments.c.name.desc()
            ).limit(page_size + 1)
            rows = connection.execute(query).all()
            token = ""
            if len(rows) > page_size:
                last = rows[page_size - 1]
                token = f"{last.created_at}:{last.name}"
                rows = rows[:page_size]
            return ExperimentPage([_experiment(r) for r in rows], token)

        return await self._run(work)

    async def stop(self, name: str, reason: str, when: datetime) -> Experiment:
        def work(connection: Connection) -> Experiment:
            current = _get(connection, name)
            if current.state is ExperimentState.STOPPED:
                return current
            connection.execute(
                experiments.update()
                .where(experiments.c.name == name, experiments.c.state == "running")
                .values(state="stopped", stopped_at=_micros(when), stop_reason=reason)
            )
            return _get(connection, name)

        return await self._run(work)

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)


def _get(connection: Connection, name: str) -> Experiment:
    row = connection.execute(experiments.select().where(experiments.c.name == name)).first()
    if row is None:
        raise NotFound(f"experiment {name!r} not found")
    return _experiment(row)


def _check_free(connection: Connection, experiment: Experiment) -> None:
    taken = connection.execute(
        sa.select(experiments.c.name).where(experiments.c.name == experiment.name)
    ).first()
    if taken is not None:
        raise AlreadyExists(f"experiment {experiment.name!r} already exists")
    running = connection.execute(
        sa.select(experiments.c.name).where(
            experiments.c.model == experiment.model, experiments.c.state == "running"
        )
    ).first()
    if running is not None:
        raise FailedPrecondition(
            f"model {experiment.model!r} already has a running experiment: {running.name}"
        )


def _parse_token(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    created, sep, name = token.partition(":")
    if not sep or not created.isdigit():
        raise InvalidInput.field("page_token", "not a token this server issued")
    return int(created), name


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
