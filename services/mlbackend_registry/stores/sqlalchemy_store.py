"""The metadata store on SQLAlchemy Core: SQLite (WAL, embedded default) and PostgreSQL.

Writers are serialized — ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory
lock on PostgreSQL — so the next version number and the next change revision are read
and written inside one transaction that no other writer interleaves with: numbers have
no gaps or duplicates and revisions follow commit order (what Watch resumes on).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Row

from mlbackend_registry.core.domain import (
    DELETIONS,
    LATEST,
    Action,
    Alias,
    ArtifactFormat,
    Attachment,
    AuditEvent,
    AuditInfo,
    Change,
    Json,
    ModelVersion,
    RegisteredModel,
    Resource,
    ResourceKind,
    Snapshot,
    Stage,
    VersionDraft,
    VersionRef,
    VersionStatus,
    alias_resource,
    check_can_take_alias,
    check_transition,
    from_json,
    kind_of,
    model_resource,
    now,
    resource_name,
    to_json,
    version_resource,
)
from mlbackend_runtime.errors import (
    AlreadyExists,
    DependencyUnavailable,
    FailedPrecondition,
    NotFound,
)
from mlbackend_runtime.sql import refuse_nul_text, sqlalchemy_url

metadata = sa.MetaData()

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

models = sa.Table(
    "registered_models",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("latest_version", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
)

versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("model", sa.String(128), sa.ForeignKey("registered_models.name"), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_reason", sa.Text, nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("previous_version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.Text, nullable=False),
    sa.ForeignKeyConstraint(
        ["model", "version"], ["model_versions.model", "model_versions.version"]
    ),
)

alias_history = sa.Table(
    "alias_history",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Index("ix_alias_history_alias", "model", "alias", "id"),
)

attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, index=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.ForeignKeyConstraint(
        ["model", "version"], ["model_versions.model", "model_versions.version"]
    ),
)

changes = sa.Table(
    "changes",
    metadata,
    sa.Column("revision", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("time", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("before", sa.Text, nullable=True),
    sa.Column("after", sa.Text, nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Index("ix_changes_model_revision", "model", "revision"),
)

MIGRATIONS: tuple[tuple[int, tuple[sa.Table, ...]], ...] = (
    (1, (models, versions, aliases, alias_history, attachments, changes)),
)
"""Schema versions in order, each creating its tables; later ones will alter."""

_PG_WRITE_LOCK = 0x6D6C_7265  # "mlre": the advisory lock id serializing registry writers


def _ts(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def _dt(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, UTC)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def engine_url(database_url: str | None, data_dir: Path) -> str:
    """The SQLAlchemy URL: PostgreSQL (psycopg 3) when given, else SQLite in data_dir."""
    if database_url is None:
        return f"sqlite:///{data_dir / 'registry.db'}"
    return sqlalchemy_url(database_url)


class SqlAlchemyStore:
    """One implementation of :class:`RegistryStore` for SQLite and PostgreSQL."""

    def __init__(self, url: str) -> None:
        self._sqlite = url.startswith("sqlite")
        self._engine: Engine
        if self._sqlite:
            self._engine = sa.create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30}
            )
            event.listen(self._engine, "connect", _sqlite_connect)
            event.listen(self._engine, "begin", _sqlite_begin)
        else:
            self._engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10)
            refuse_nul_text(self._engine)

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    # ---- transactions -----------------------------------------------------------------

    @contextmanager
    def _tx(self, *, write: bool, snapshot: bool = False) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                conn.info["immediate"] = write
                if snapshot and not self._sqlite:
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    if write and not self._sqlite:
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_WRITE_LOCK)))
                    yield conn
        except sa.exc.OperationalError as exc:
            raise DependencyUnavailable("database", f"database error: {exc.orig}") from exc

    def migrate(self) -> None:
        with self._tx(write=True) as conn:
            schema_migrations.create(conn, checkfirst=True)
            applied = set(conn.execute(sa.select(schema_migrations.c.version)).scalars())
            for number, tables in MIGRATIONS:
                if number in applied:
                    continue
                for table in tables:
                    table.create(conn, checkfirst=True)
                conn.execute(
                    schema_migrations.insert().values(version=number, applied_at=_ts(now()))
                )

    def head_revision(self) -> int:
        with self._tx(write=False) as conn:
            return self._head(conn)

    @staticmethod
    def _head(conn: Connection) -> int:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(changes.c.revision), 0))
            ).scalar_one()
        )

    def _record(
        self,
        conn: Connection,
        audit: AuditInfo,
        action: Action,
        model: str,
        before: Resource | None,
        after: Resource | None,
        *,
        about: Resource | None = None,
    ) -> int:
        """Append one audit event (= change log entry); returns its revision."""
        subject = about or after or before
        assert subject is not None
        result = conn.execute(
            changes.insert().values(
                time=_ts(now()),
                actor=audit.actor,
                action=action.value,
                model=model,
                kind=kind_of(subject),
                resource=resource_name(subject),
                before=None if before is None else _dumps(to_json(before)),
                after=None if after is None else _dumps(to_json(after)),
                reason=audit.reason,
                request_id=audit.request_id,
            )
        )
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def create_note(self, model: str, version: int | None, audit: AuditInfo) -> AuditEvent:
        with self._tx(write=True) as conn:
            about: Resource = (
                self._model(conn, self._model_row(conn, model))
                if version is None
                else self._version(conn, model, version)
            )
            revision = self._record(conn, audit, Action.NOTE, model, None, None, about=about)
            row = conn.execute(sa.select(changes).where(changes.c.revision == revision)).one()
            return _audit_event(row)

    # ---- registered models ------------------------------------------------------------

    def _model_row(self, conn: Connection, name: str, *, lock: bool = False) -> Row[Any]:
        row = conn.execute(sa.select(models).where(models.c.name == name)).first()
        if row is None:
            raise NotFound(f"registered model {name!r} does not exist")
        return row

    def _model(self, conn: Connection, row: Row[Any]) -> RegisteredModel:
        alias_rows = conn.execute(
            sa.select(aliases.c.alias, aliases.c.version).where(aliases.c.model == row.name)
        )
        return RegisteredModel(
            name=row.name,
            description=row.description,
            tags=json.loads(row.tags),
            aliases={a.alias: int(a.version) for a in alias_rows},
            latest_version=int(row.latest_version),
            created_at=_dt(row.created_at),
            updated_at=_dt(row.updated_at),
            created_by=row.created_by,
        )

    def _insert_model(self, conn: Connection, model: RegisteredModel, audit: AuditInfo) -> None:
        exists = conn.execute(sa.select(models.c.name).where(models.c.name == model.name)).first()
        if exists is not None:
            raise AlreadyExists(f"registered model {model.name!r} already exists")
        conn.execute(
            models.insert().values(
                name=model.name,
                description=model.description,
                tags=_dumps(model.tags),
                latest_version=0,
                created_at=_ts(model.created_at),
                updated_at=_ts(model.updated_at),
                created_by=model.created_by,
            )
        )
        self._record(conn, audit, Action.MODEL_CREATED, model.name, None, model)

    def create_model(self, model: RegisteredModel, audit: AuditInfo) -> RegisteredModel:
        with self._tx(write=True) as conn:
            self._insert_model(conn, model, audit)
            return self._model(conn, self._model_row(conn, model.name))

    def get_model(self, name: str) -> RegisteredModel:
        with self._tx(write=False) as conn:
            return self._model(conn, self._model_row(conn, name))

    def list_models(
        self, name_prefix: str, tags: dict[str, str], after: str | None, limit: int
    ) -> list[RegisteredModel]:
        found: list[RegisteredModel] = []
        with self._tx(write=False) as conn:
            cursor = after
            while len(found) < limit:
                query = sa.select(models).order_by(models.c.name).limit(500)
                if name_prefix:
                    query = query.where(models.c.name.startswith(name_prefix, autoescape=True))
                if cursor is not None:
                    query = query.where(models.c.name > cursor)
                rows = conn.execute(query).all()
                for row in rows:
                    model_tags = json.loads(row.tags)
                    if all(model_tags.get(k) == v for k, v in tags.items()):
                        found.append(self._model(conn, row))
                        if len(found) == limit:
                            break
                if len(rows) < 500:
                    break
                cursor = rows[-1].name
        return found

    def update_model(
        self, name: str, description: str | None, tags: dict[str, str] | None, audit: AuditInfo
    ) -> RegisteredModel:
        with self._tx(write=True) as conn:
            before = self._model(conn, self._model_row(conn, name))
            values: dict[str, Any] = {"updated_at": _ts(now())}
            if description is not None:
                values["description"] = description
            if tags is not None:
                values["tags"] = _dumps(tags)
            conn.execute(models.update().where(models.c.name == name).values(**values))
            after = self._model(conn, self._model_row(conn, name))
            self._record(conn, audit, Action.MODEL_UPDATED, name, before, after)
            return after

    def delete_model(self, name: str, audit: AuditInfo) -> set[str]:
        with self._tx(write=True) as conn:
            before = self._model(conn, self._model_row(conn, name))
            if before.aliases:
                held = ", ".join(f"{a} -> {v}" for a, v in sorted(before.aliases.items()))
                raise FailedPrecondition(
                    f"registered model {name!r} still has aliases ({held}); delete them first"
                )
            digests = set(
                conn.execute(sa.select(versions.c.sha256).where(versions.c.model == name)).scalars()
            )
            digests |= set(
                conn.execute(
                    sa.select(attachments.c.sha256).where(attachments.c.model == name)
                ).scalars()
            )
            conn.execute(alias_history.delete().where(alias_history.c.model == name))
            conn.execute(attachments.delete().where(attachments.c.model == name))
            conn.execute(versions.delete().where(versions.c.model == name))
            conn.execute(models.delete().where(models.c.name == name))
            self._record(conn, audit, Action.MODEL_DELETED, name, before, None)
            return digests

    # ---- versions ---------------------------------------------------------------------

    def _version_row(self, conn: Connection, model: str, number: int) -> Row[Any]:
        row = conn.execute(
            sa.select(versions).where(versions.c.model == model, versions.c.version == number)
        ).first()
        if row is None:
            self._model_row(conn, model)
            raise NotFound(f"version {number} of model {model!r} does not exist")
        return row

    def _versions(self, conn: Connection, rows: Sequence[Row[Any]]) -> list[ModelVersion]:
        if not rows:
            return []
        model = rows[0].model
        numbers = [r.version for r in rows]
        held: dict[int, list[str]] = {}
        for a in conn.execute(
            sa.select(aliases.c.alias, aliases.c.version)
            .where(aliases.c.model == model, aliases.c.version.in_(numbers))
            .order_by(aliases.c.alias)
        ):
            held.setdefault(int(a.version), []).append(a.alias)
        files: dict[int, list[str]] = {}
        for f in conn.execute(
            sa.select(attachments.c.name, attachments.c.version)
            .where(attachments.c.model == model, attachments.c.version.in_(numbers))
            .order_by(attachments.c.name)
        ):
            files.setdefault(int(f.version), []).append(f.name)
        out = []
        for row in rows:
            spec = json.loads(row.spec)
            draft = VersionDraft(
                format=ArtifactFormat(row.format),
                framework_name=spec["framework_name"],
                framework_version=spec["framework_version"],
                signature=spec["signature"],
                output=spec["output"],
                feature_refs=tuple(spec["feature_refs"]),
                feature_service=spec["feature_service"],
                metrics=spec["metrics"],
                params=spec["params"],
                tags=json.loads(row.tags),
                description=row.description,
                lineage=spec["lineage"],
                baseline_statistics=spec["baseline_statistics"],
                input_example=tuple(spec["input_example"]),
            )
            number = int(row.version)
            out.append(
                ModelVersion(
                    model=row.model,
                    version=number,
                    draft=draft,
                    sha256=row.sha256,
                    size_bytes=int(row.size_bytes),
                    status=VersionStatus(row.status),
                    status_reason=row.status_reason,
                    stage=Stage(row.stage),
                    aliases=tuple(held.get(number, ())),
                    attachments=tuple(files.get(number, ())),
                    created_at=_dt(row.created_at),
                    updated_at=_dt(row.updated_at),
                    created_by=row.created_by,
                )
            )
        return out

    def _version(self, conn: Connection, model: str, number: int) -> ModelVersion:
        return self._versions(conn, [self._version_row(conn, model, number)])[0]

    def create_version(
        self,
        model: str,
        draft: VersionDraft,
        sha256: str,
        size_bytes: int,
        audit: AuditInfo,
        *,
        create_model: bool,
    ) -> ModelVersion:
        with self._tx(write=True) as conn:
            row = conn.execute(sa.select(models).where(models.c.name == model)).first()
            if row is None:
                if not create_model:
                    raise NotFound(f"registered model {model!r} does not exist")
                self._insert_model(conn, RegisteredModel(name=model, created_by=audit.actor), audit)
                row = self._model_row(conn, model)
            number = int(row.latest_version) + 1
            stamp = _ts(now())
            conn.execute(
                models.update()
                .where(models.c.name == model)
                .values(latest_version=number, updated_at=stamp)
            )
            spec = {
                "framework_name": draft.framework_name,
                "framework_version": draft.framework_version,
                "signature": draft.signature,
                "output": draft.output,
                "feature_refs": list(draft.feature_refs),
                "feature_service": draft.feature_service,
                "metrics": draft.metrics,
                "params": draft.params,
                "lineage": draft.lineage,
                "baseline_statistics": draft.baseline_statistics,
                "input_example": list(draft.input_example),
            }
            conn.execute(
                versions.insert().values(
                    model=model,
                    version=number,
                    status=VersionStatus.READY.value,
                    status_reason="",
                    stage=Stage.NONE.value,
                    format=draft.format.value,
                    sha256=sha256,
                    size_bytes=size_bytes,
                    description=draft.description,
                    tags=_dumps(draft.tags),
                    spec=_dumps(spec),
                    created_at=stamp,
                    updated_at=stamp,
                    created_by=audit.actor,
                )
            )
            created = self._version(conn, model, number)
            self._record(conn, audit, Action.VERSION_CREATED, model, None, created)
            return created

    def _resolve(self, conn: Connection, model: str, ref: VersionRef) -> int:
        if isinstance(ref, int):
            return ref
        if ref == LATEST:
            number = conn.execute(
                sa.select(sa.func.max(versions.c.version)).where(
                    versions.c.model == model, versions.c.status == VersionStatus.READY.value
                )
            ).scalar_one()
            if number is None:
                self._model_row(conn, model)
                raise NotFound(f"model {model!r} has no READY version")
            return int(number)
        held = conn.execute(
            sa.select(aliases.c.version).where(aliases.c.model == model, aliases.c.alias == ref)
        ).scalar_one_or_none()
        if held is None:
            self._model_row(conn, model)
            raise NotFound(f"model {model!r} has no alias {ref!r}")
        return int(held)

    def get_version(self, model: str, ref: VersionRef) -> ModelVersion:
        with self._tx(write=False) as conn:
            return self._version(conn, model, self._resolve(conn, model, ref))

    def list_versions(
        self,
        model: str,
        tags: dict[str, str],
        stage: Stage | None,
        status: VersionStatus | None,
        before: int | None,
        limit: int,
    ) -> list[ModelVersion]:
        found: list[Row[Any]] = []
        with self._tx(write=False) as conn:
            self._model_row(conn, model)
            cursor = before
            while len(found) < limit:
                query = (
                    sa.select(versions)
                    .where(versions.c.model == model)
                    .order_by(versions.c.version.desc())
                    .limit(500)
                )
                if stage is not None:
                    query = query.where(versions.c.stage == stage.value)
                if status is not None:
                    query = query.where(versions.c.status == status.value)
                if cursor is not None:
                    query = query.where(versions.c.version < cursor)
                rows = conn.execute(query).all()
                for row in rows:
                    version_tags = json.loads(row.tags)
                    if all(version_tags.get(k) == v for k, v in tags.items()):
                        found.append(row)
                        if len(found) == limit:
                            break
                if len(rows) < 500:
                    break
                cursor = int(rows[-1].version)
            return self._versions(conn, found)

    def update_version(
        self,
        model: str,
        version: int,
        description: str | None,
        tags: dict[str, str] | None,
        audit: AuditInfo,
    ) -> ModelVersion:
        with self._tx(write=True) as conn:
            before = self._version(conn, model, version)
            values: dict[str, Any] = {"updated_at": _ts(now())}
            if description is not None:
                values["description"] = description
            if tags is not None:
                values["tags"] = _dumps(tags)
            self._update_version(conn, model, version, values)
            after = self._version(conn, model, version)
            self._record(conn, audit, Action.VERSION_UPDATED, model, before, after)
            return after

    @staticmethod
    def _update_version(conn: Connection, model: str, version: int, values: dict[str, Any]) -> None:
        conn.execute(
            versions.update()
            .where(versions.c.model == model, versions.c.version == version)
            .values(**values)
        )

    def delete_version(self, model: str, version: int, audit: AuditInfo) -> set[str]:
        with self._tx(write=True) as conn:
            before = self._version(conn, model, version)
            if before.aliases:
                raise FailedPrecondition(
                    f"version {version} of {model!r} is held by aliases "
                    f"{', '.join(before.aliases)}; move or delete them first"
                )
            where_version = (attachments.c.model == model) & (attachments.c.version == version)
            digests = {before.sha256}
            digests |= set(
                conn.execute(sa.select(attachments.c.sha256).where(where_version)).scalars()
            )
            conn.execute(attachments.delete().where(where_version))
            conn.execute(
                alias_history.delete().where(
                    alias_history.c.model == model, alias_history.c.version == version
                )
            )
            conn.execute(
                versions.delete().where(versions.c.model == model, versions.c.version == version)
            )
            self._record(conn, audit, Action.VERSION_DELETED, model, before, None)
            return digests

    def transition_stage(
        self, model: str, version: int, stage: Stage, archive_existing: bool, audit: AuditInfo
    ) -> ModelVersion:
        with self._tx(write=True) as conn:
            before = self._version(conn, model, version)
            if before.stage is stage:
                return before
            check_transition(before, stage)
            self._set_stage(conn, before, stage, audit)
            if stage is Stage.PRODUCTION and archive_existing:
                rows = conn.execute(
                    sa.select(versions).where(
                        versions.c.model == model,
                        versions.c.stage == Stage.PRODUCTION.value,
                        versions.c.version != version,
                    )
                ).all()
                for other in self._versions(conn, rows):
                    check_transition(other, Stage.ARCHIVED)
                    self._set_stage(conn, other, Stage.ARCHIVED, audit)
            return self._version(conn, model, version)

    def _set_stage(
        self, conn: Connection, before: ModelVersion, stage: Stage, audit: AuditInfo
    ) -> None:
        stamp = now()
        self._update_version(
            conn, before.model, before.version, {"stage": stage.value, "updated_at": _ts(stamp)}
        )
        after = replace(before, stage=stage, updated_at=stamp)
        self._record(conn, audit, Action.STAGE_CHANGED, before.model, before, after)

    # ---- aliases ----------------------------------------------------------------------

    def _alias(self, conn: Connection, model: str, alias: str) -> Alias | None:
        row = conn.execute(
            sa.select(aliases).where(aliases.c.model == model, aliases.c.alias == alias)
        ).first()
        if row is None:
            return None
        return Alias(
            model=model,
            alias=alias,
            version=int(row.version),
            previous_version=int(row.previous_version),
            updated_at=_dt(row.updated_at),
            updated_by=row.updated_by,
        )

    def _touch_model(self, conn: Connection, model: str, stamp: datetime) -> None:
        conn.execute(models.update().where(models.c.name == model).values(updated_at=_ts(stamp)))

    def set_alias(
        self, model: str, alias: str, version: int, expected: int | None, audit: AuditInfo
    ) -> Alias:
        with self._tx(write=True) as conn:
            target = self._version(conn, model, version)
            check_can_take_alias(target, alias)
            current = self._alias(conn, model, alias)
            held = current.version if current is not None else 0
            if expected is not None and expected != held:
                raise FailedPrecondition(
                    f"alias {alias!r} of {model!r} points at {held or 'nothing'}, "
                    f"not {expected or 'nothing'}"
                )
            if current is not None and current.version == version:
                return current
            moved = Alias(model, alias, version, held, now(), audit.actor)
            values = {
                "version": version,
                "previous_version": held,
                "updated_at": _ts(moved.updated_at),
                "updated_by": audit.actor,
            }
            if current is None:
                conn.execute(aliases.insert().values(model=model, alias=alias, **values))
            else:
                conn.execute(
                    aliases.update()
                    .where(aliases.c.model == model, aliases.c.alias == alias)
                    .values(**values)
                )
            conn.execute(alias_history.insert().values(model=model, alias=alias, version=version))
            self._touch_model(conn, model, moved.updated_at)
            self._record(conn, audit, Action.ALIAS_SET, model, current, moved)
            return moved

    def delete_alias(self, model: str, alias: str, audit: AuditInfo) -> None:
        with self._tx(write=True) as conn:
            current = self._existing_alias(conn, model, alias)
            conn.execute(aliases.delete().where(aliases.c.model == model, aliases.c.alias == alias))
            conn.execute(
                alias_history.delete().where(
                    alias_history.c.model == model, alias_history.c.alias == alias
                )
            )
            self._touch_model(conn, model, now())
            self._record(conn, audit, Action.ALIAS_DELETED, model, current, None)

    def _existing_alias(self, conn: Connection, model: str, alias: str) -> Alias:
        current = self._alias(conn, model, alias)
        if current is None:
            self._model_row(conn, model)
            raise NotFound(f"model {model!r} has no alias {alias!r}")
        return current

    def rollback_alias(self, model: str, alias: str, audit: AuditInfo) -> Alias:
        with self._tx(write=True) as conn:
            current = self._existing_alias(conn, model, alias)
            history = conn.execute(
                sa.select(alias_history.c.id, alias_history.c.version)
                .where(alias_history.c.model == model, alias_history.c.alias == alias)
                .order_by(alias_history.c.id.desc())
            ).all()
            # The newest entry is the current holder; pop it and any holder that can no
            # longer take the alias (archived), then point at the next one.
            popped: list[int] = []
            target: ModelVersion | None = None
            for entry in history:
                if not popped or int(entry.version) == current.version:
                    popped.append(entry.id)
                    continue
                candidate = self._versions(
                    conn, [self._version_row(conn, model, int(entry.version))]
                )[0]
                if candidate.stage is Stage.ARCHIVED:
                    popped.append(entry.id)
                    continue
                target = candidate
                break
            if target is None:
                raise FailedPrecondition(
                    f"alias {alias!r} of {model!r} has no earlier version to roll back to"
                )
            conn.execute(alias_history.delete().where(alias_history.c.id.in_(popped)))
            moved = Alias(model, alias, target.version, current.version, now(), audit.actor)
            conn.execute(
                aliases.update()
                .where(aliases.c.model == model, aliases.c.alias == alias)
                .values(
                    version=moved.version,
                    previous_version=moved.previous_version,
                    updated_at=_ts(moved.updated_at),
                    updated_by=audit.actor,
                )
            )
            self._touch_model(conn, model, moved.updated_at)
            self._record(conn, audit, Action.ALIAS_ROLLED_BACK, model, current, moved)
            return moved

    # ---- attachments ------------------------------------------------------------------

    @staticmethod
    def _attachment(row: Row[Any]) -> Attachment:
        return Attachment(
            model=row.model,
            version=int(row.version),
            name=row.name,
            content_type=row.content_type,
            sha256=row.sha256,
            size_bytes=int(row.size_bytes),
            description=row.description,
            created_at=_dt(row.created_at),
            created_by=row.created_by,
        )

    def put_attachment(self, attachment: Attachment, audit: AuditInfo) -> set[str]:
        a = attachment
        with self._tx(write=True) as conn:
            self._version_row(conn, a.model, a.version)
            key = (
                (attachments.c.model == a.model)
                & (attachments.c.version == a.version)
                & (attachments.c.name == a.name)
            )
            old = conn.execute(sa.select(attachments).where(key)).first()
            conn.execute(attachments.delete().where(key))
            conn.execute(
                attachments.insert().values(
                    model=a.model,
                    version=a.version,
                    name=a.name,
                    content_type=a.content_type,
                    sha256=a.sha256,
                    size_bytes=a.size_bytes,
                    description=a.description,
                    created_at=_ts(a.created_at),
                    created_by=a.created_by,
                )
            )
            before = None if old is None else self._attachment(old)
            self._record(conn, audit, Action.ATTACHMENT_UPLOADED, a.model, before, a)
            return set() if old is None else {old.sha256}

    def get_attachment(self, model: str, version: int, name: str) -> Attachment:
        with self._tx(write=False) as conn:
            row = conn.execute(
                sa.select(attachments).where(
                    attachments.c.model == model,
                    attachments.c.version == version,
                    attachments.c.name == name,
                )
            ).first()
            if row is None:
                self._version_row(conn, model, version)
                raise NotFound(f"version {version} of {model!r} has no attachment {name!r}")
            return self._attachment(row)

    def list_attachments(
        self, model: str, version: int, after: str | None, limit: int
    ) -> list[Attachment]:
        with self._tx(write=False) as conn:
            self._version_row(conn, model, version)
            query = (
                sa.select(attachments)
                .where(attachments.c.model == model, attachments.c.version == version)
                .order_by(attachments.c.name)
                .limit(limit)
            )
            if after is not None:
                query = query.where(attachments.c.name > after)
            return [self._attachment(r) for r in conn.execute(query)]

    # ---- audit and change log ---------------------------------------------------------

    def list_audit(
        self,
        model: str | None,
        action: Action | None,
        start: datetime | None,
        end: datetime | None,
        after_revision: int,
        limit: int,
    ) -> list[AuditEvent]:
        query = (
            sa.select(changes)
            .where(changes.c.revision > after_revision)
            .order_by(changes.c.revision)
            .limit(limit)
        )
        if model is not None:
            query = query.where(changes.c.model == model)
        if action is not None:
            query = query.where(changes.c.action == action.value)
        if start is not None:
            query = query.where(changes.c.time >= _ts(start))
        if end is not None:
            query = query.where(changes.c.time < _ts(end))
        with self._tx(write=False) as conn:
            return [_audit_event(r) for r in conn.execute(query)]

    def changes(self, model: str | None, after_revision: int, limit: int) -> list[Change]:
        query = (
            sa.select(
                changes.c.revision,
                changes.c.time,
                changes.c.action,
                changes.c.kind,
                changes.c.resource,
                changes.c.after,
            )
            .where(changes.c.revision > after_revision, changes.c.action != Action.NOTE.value)
            .order_by(changes.c.revision)
            .limit(limit)
        )
        if model is not None:
            query = query.where(changes.c.model == model)
        out = []
        with self._tx(write=False) as conn:
            for r in conn.execute(query):
                after = _loads(r.after)
                kind: ResourceKind = r.kind
                state = (
                    None
                    if Action(r.action) in DELETIONS or after is None
                    else from_json(kind, after)
                )
                out.append(Change(int(r.revision), _dt(r.time), r.resource, state))
        return out

    def snapshot(self, model: str | None) -> Snapshot:
        with self._tx(write=False, snapshot=True) as conn:
            revision = self._head(conn)
            query = sa.select(models).order_by(models.c.name)
            if model is not None:
                query = query.where(models.c.name == model)
            found = [self._model(conn, row) for row in conn.execute(query).all()]
            all_versions: list[ModelVersion] = []
            all_aliases: list[Alias] = []
            for m in found:
                rows = conn.execute(
                    sa.select(versions)
                    .where(versions.c.model == m.name)
                    .order_by(versions.c.version)
                ).all()
                all_versions.extend(self._versions(conn, rows))
                for name in sorted(m.aliases):
                    alias = self._alias(conn, m.name, name)
                    assert alias is not None
                    all_aliases.append(alias)
            return Snapshot(revision, found, all_versions, all_aliases)

    # ---- blobs ------------------------------------------------------------------------

    def unreferenced(self, digests: Iterable[str]) -> set[str]:
        wanted = set(digests)
        if not wanted:
            return set()
        with self._tx(write=False) as conn:
            used = set(
                conn.execute(
                    sa.select(versions.c.sha256).where(versions.c.sha256.in_(wanted))
                ).scalars()
            )
            used |= set(
                conn.execute(
                    sa.select(attachments.c.sha256).where(attachments.c.sha256.in_(wanted))
                ).scalars()
            )
        return wanted - used

    def referenced_digests(self) -> set[str]:
        with self._tx(write=False) as conn:
            used = set(conn.execute(sa.select(versions.c.sha256)).scalars())
            used |= set(conn.execute(sa.select(attachments.c.sha256)).scalars())
        return used


def _audit_event(row: Row[Any]) -> AuditEvent:
    return AuditEvent(
        revision=int(row.revision),
        time=_dt(row.time),
        actor=row.actor,
        action=Action(row.action),
        model=row.model,
        resource=row.resource,
        before=_loads(row.before),
        after=_loads(row.after),
        reason=row.reason,
        request_id=row.request_id,
    )


def _loads(text: str | None) -> Json | None:
    return None if text is None else dict(json.loads(text))


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit one is deferred).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("immediate") else "BEGIN")


__all__ = ["SqlAlchemyStore", "alias_resource", "engine_url", "model_resource", "version_resource"]
