"""Offline history and commit log in PostgreSQL (SQLAlchemy Core on psycopg 3).

The same contract as the SQLite store, on tables prefixed ``feature_`` so the store can
share a database with the registry and the gateway:

- ``feature_batches`` is the commit log. A batch's sequence is ``max + 1`` taken under a
  transaction-scoped advisory lock, so sequences have no gaps and follow commit order
  even with several replicas writing: a replay reading ``seq > n`` never misses a batch
  that commits later under a lower number (what a plain ``SERIAL`` would allow).
- ``feature_history`` holds every written row; its key is (seq, row_idx).
- The as-of join unnests the query arrays and does one backward index seek per query
  row (``LATERAL … ORDER BY … LIMIT 1`` on the (view, entity, event_us, seq, row_idx)
  index), all in one statement.
- Statistics run in SQL over the JSON payloads, with the SQLite store's definitions:
  nearest-rank quantiles (offset ``round(q * (n - 1))`` in sorted order), ``bins`` equal
  width buckets from min to max, population standard deviation.

Entity and view columns use the "C" collation: byte order, as SQLite compares, so pages
of ``latest_in_range`` and category ties sort the same on both engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mlbackend_features.core.model import Commit, CommittedBatch, Record, now_us
from mlbackend_features.stores.offline import NumericSummary, OfflineStore
from mlbackend_runtime.errors import DependencyUnavailable
from mlbackend_runtime.sql import in_transaction, refuse_nul_text, sqlalchemy_url

T = TypeVar("T")

# Any constant unique among the project's advisory locks ("mlbfeat" in ASCII).
COMMIT_LOCK = 0x6D6C_6266_6561_74
SCHEMA_LOCK = COMMIT_LOCK + 1

_KEY = sa.Text(collation="C")

metadata = sa.MetaData()

batches = sa.Table(
    "feature_batches",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("batch_id", sa.Text, nullable=False, unique=True),
    sa.Column("feature_view", _KEY, nullable=False),
    sa.Column("row_count", sa.Integer, nullable=False),
    sa.Column("committed_us", sa.BigInteger, nullable=False),
)

history = sa.Table(
    "feature_history",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("row_idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("feature_view", _KEY, nullable=False),
    sa.Column("entity", _KEY, nullable=False),
    sa.Column("event_us", sa.BigInteger, nullable=False),
    # Text, not jsonb: the payload comes back byte for byte (the online stores and the
    # replay compare it); statistics cast it to jsonb where they need the fields.
    sa.Column("vals", sa.Text, nullable=False),
    sa.Index("ix_feature_history_asof", "feature_view", "entity", "event_us", "seq", "row_idx"),
    sa.Index("ix_feature_history_time", "feature_view", "event_us"),
)

markers = sa.Table(
    "feature_markers",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

_INSERT_ROWS = sa.text(
    """
    INSERT INTO feature_history (seq, row_idx, feature_view, entity, event_us, vals)
    SELECT :seq, r.i - 1, :view, r.entity, r.event_us, r.vals
    FROM unnest(CAST(:entities AS text[]), CAST(:events AS bigint[]), CAST(:vals AS text[]))
        WITH ORDINALITY AS r(entity, event_us, vals, i)
    """
)

_AS_OF = sa.text(
    """
    SELECT q.i - 1 AS idx, h.event_us, h.vals
    FROM unnest(CAST(:entities AS text[]), CAST(:times AS bigint[]))
        WITH ORDINALITY AS q(entity, as_of, i)
    CROSS JOIN LATERAL (
        SELECT event_us, vals FROM feature_history
        WHERE feature_view = :view AND entity = q.entity COLLATE "C" AND event_us <= q.as_of
        ORDER BY event_us DESC, seq DESC, row_idx DESC
        LIMIT 1
    ) AS h
    """
)

_LATEST_IN_RANGE = sa.text(
    """
    SELECT DISTINCT ON (entity) entity, event_us, vals FROM feature_history
    WHERE feature_view = :view AND event_us >= :start AND event_us < :end AND entity > :after
    ORDER BY entity, event_us DESC, seq DESC, row_idx DESC
    LIMIT :limit
    """
)

# One row's value of the feature: its JSON (x) and JSON type (t; NULL when absent).
# jsonb cannot hold U+0000, so an escaped NUL reads as U+FFFD here (escaped backslashes
# are set aside first; the JSON encoder never writes a raw control character like chr(1)).
_SOURCE = r"""
    WITH src AS (
        SELECT j -> CAST(:feature AS text) AS x, jsonb_typeof(j -> CAST(:feature AS text)) AS t
        FROM (
            SELECT CAST(CASE WHEN strpos(vals, '\u0000') = 0 THEN vals ELSE replace(replace(
                replace(vals, '\\', chr(1)), '\u0000', '\ufffd'), chr(1), '\\') END
                AS jsonb) AS j
            FROM feature_history
            WHERE feature_view = :view AND event_us >= :start AND event_us < :end
        ) AS rows
    ), finite AS (
        SELECT CAST(x AS double precision) AS x FROM src WHERE t = 'number'
    )
"""

# Counts and moments in one pass (the JSON is parsed once per row and statement).
_COUNTS = sa.text(
    _SOURCE
    + """
    SELECT COUNT(*), COUNT(*) FILTER (WHERE t IS NULL OR t = 'null'),
           COUNT(*) FILTER (WHERE t = 'string'),
           COUNT(DISTINCT x) FILTER (WHERE t IS NOT NULL AND t <> 'null'),
           COUNT(*) FILTER (WHERE t = 'number'),
           AVG(CAST(x AS double precision)) FILTER (WHERE t = 'number'),
           stddev_pop(CAST(x AS double precision)) FILTER (WHERE t = 'number'),
           MIN(CAST(x AS double precision)) FILTER (WHERE t = 'number'),
           MAX(CAST(x AS double precision)) FILTER (WHERE t = 'number'),
           COUNT(DISTINCT CAST(x AS double precision)) FILTER (WHERE t = 'number')
    FROM src
    """
)

# Categories ordered as SQLite orders json_extract values: numbers by value, booleans
# as 0/1, strings by bytes.
_TOP = sa.text(
    _SOURCE
    + """
    SELECT t, x #>> '{}' AS v, COUNT(*) AS n FROM src
    WHERE t IS NOT NULL AND t <> 'null'
    GROUP BY t, x
    ORDER BY n DESC,
        CASE t WHEN 'number' THEN CAST(x AS numeric)
               WHEN 'boolean' THEN CASE WHEN CAST(x AS boolean) THEN 1 ELSE 0 END END,
        x #>> '{}' COLLATE "C"
    LIMIT 20
    """
)

_RANKS = sa.text(
    _SOURCE
    + """
    SELECT r, x FROM (
        SELECT x, row_number() OVER (ORDER BY x) - 1 AS r FROM finite
    ) AS ranked
    WHERE r = ANY(CAST(:offsets AS bigint[]))
    """
)

_HISTOGRAM = sa.text(
    _SOURCE
    + """
    SELECT LEAST(CAST(floor((x - :low) / :width) AS bigint), :last) AS b, COUNT(*)
    FROM finite GROUP BY b
    """
)


def create_schema(engine: sa.Engine, schema: sa.MetaData) -> None:
    """Create missing tables; the lock keeps replicas starting together from racing."""
    with engine.begin() as connection:
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        schema.create_all(connection)


class PostgresOfflineStore(OfflineStore):
    name = "postgresql"

    def __init__(self, database_url: str, *, pool_size: int = 8) -> None:
        self._engine = sa.create_engine(
            sqlalchemy_url(database_url), pool_pre_ping=True, pool_size=pool_size
        )
        refuse_nul_text(self._engine)
        try:
            create_schema(self._engine, metadata)
        except sa.exc.OperationalError as exc:
            self._engine.dispose()
            raise DependencyUnavailable("offline-store", str(exc.orig)) from None

    async def _run(self, work: Callable[[Connection], T]) -> T:
        return await in_transaction(self._engine, "offline-store", work)

    async def append(self, batch_id: str, view: str, records: Sequence[Record]) -> Commit:
        def work(conn: Connection) -> Commit:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": COMMIT_LOCK})
            row = conn.execute(
                sa.select(batches.c.seq, batches.c.row_count).where(batches.c.batch_id == batch_id)
            ).first()
            if row is not None:
                return Commit(int(row.seq), int(row.row_count), duplicate=True)
            seq = int(
                conn.execute(
                    sa.select(sa.func.coalesce(sa.func.max(batches.c.seq), 0) + 1)
                ).scalar_one()
            )
            conn.execute(
                batches.insert().values(
                    seq=seq,
                    batch_id=batch_id,
                    feature_view=view,
                    row_count=len(records),
                    committed_us=now_us(),
                )
            )
            if records:
                conn.execute(
                    _INSERT_ROWS,
                    {
                        "seq": seq,
                        "view": view,
                        "entities": [r.entity for r in records],
                        "events": [r.event_us for r in records],
                        "vals": [r.payload for r in records],
                    },
                )
            return Commit(seq, len(records), duplicate=False)

        return await self._run(work)

    async def committed_after(self, sequence: int, limit: int) -> list[CommittedBatch]:
        def work(conn: Connection) -> list[CommittedBatch]:
            found = conn.execute(
                sa.select(batches.c.seq, batches.c.batch_id, batches.c.feature_view)
                .where(batches.c.seq > sequence)
                .order_by(batches.c.seq)
                .limit(limit)
            ).all()
            if not found:
                return []
            out = {seq: CommittedBatch(seq, batch_id, view, []) for seq, batch_id, view in found}
            rows = conn.execute(
                sa.select(history.c.seq, history.c.entity, history.c.event_us, history.c.vals)
                .where(history.c.seq > sequence, history.c.seq <= found[-1].seq)
                .order_by(history.c.seq, history.c.row_idx)
            )
            for seq, entity, event_us, vals in rows:
                out[seq].records.append(Record(entity, event_us, vals))
            return list(out.values())

        return await self._run(work)

    async def as_of(
        self, view: str, queries: Sequence[tuple[str, int]]
    ) -> list[tuple[int, str] | None]:
        entities = [entity for entity, _ in queries]
        times = [ts for _, ts in queries]

        def work(conn: Connection) -> list[tuple[int, str] | None]:
            out: list[tuple[int, str] | None] = [None] * len(queries)
            rows = conn.execute(_AS_OF, {"view": view, "entities": entities, "times": times})
            for idx, event_us, vals in rows:
                out[idx] = (event_us, vals)
            return out

        return await self._run(work)

    async def latest_in_range(
        self, view: str, start_us: int, end_us: int, after_entity: str, limit: int
    ) -> list[Record]:
        params = {
            "view": view,
            "start": start_us,
            "end": end_us,
            "after": after_entity,
            "limit": limit,
        }

        def work(conn: Connection) -> list[Record]:
            return [Record(*r) for r in conn.execute(_LATEST_IN_RANGE, params)]

        return await self._run(work)

    async def count_entities(self, view: str, start_us: int, end_us: int) -> int:
        def work(conn: Connection) -> int:
            return int(
                conn.execute(
                    sa.select(sa.func.count(sa.distinct(history.c.entity))).where(
                        history.c.feature_view == view,
                        history.c.event_us >= start_us,
                        history.c.event_us < end_us,
                    )
                ).scalar_one()
            )

        return await self._run(work)

    async def feature_summary(
        self,
        view: str,
        feature: str,
        numeric: bool,
        start_us: int,
        end_us: int,
        quantiles: Sequence[float],
        bins: int,
    ) -> NumericSummary:
        params = {"view": view, "feature": feature, "start": start_us, "end": end_us}

        def work(conn: Connection) -> NumericSummary:
            # One snapshot for every statement of the summary.
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            return _summary(conn, params, numeric, quantiles, bins)

        return await self._run(work)

    async def purge_before(self, view: str, cutoff_us: int, limit: int) -> int:
        def work(conn: Connection) -> int:
            result = conn.execute(
                sa.text(
                    "DELETE FROM feature_history WHERE (seq, row_idx) IN ("
                    "SELECT seq, row_idx FROM feature_history "
                    "WHERE feature_view = :view AND event_us < :cutoff LIMIT :limit)"
                ),
                {"view": view, "cutoff": cutoff_us, "limit": limit},
            )
            return int(result.rowcount)

        return await self._run(work)

    async def get_marker(self, name: str) -> int | None:
        def work(conn: Connection) -> int | None:
            value = conn.execute(
                sa.select(markers.c.value).where(markers.c.name == name)
            ).scalar_one_or_none()
            return None if value is None else int(value)

        return await self._run(work)

    async def set_marker(self, name: str, value: int) -> None:
        def work(conn: Connection) -> None:
            conn.execute(
                sa.text(
                    "INSERT INTO feature_markers (name, value) VALUES (:name, :value) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
                ),
                {"name": name, "value": value},
            )

        await self._run(work)

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)


def _category(json_type: str, text: str) -> object:
    """A category as SQLite's json_extract yields it (booleans as 1/0)."""
    if json_type == "number":
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if json_type == "boolean":
        return 1 if text == "true" else 0
    return text


def _summary(
    conn: Connection,
    params: dict[str, Any],
    numeric: bool,
    quantiles: Sequence[float],
    bins: int,
) -> NumericSummary:
    count, nulls, strings, categories, n, mean, std, low, high, distinct = conn.execute(
        _COUNTS, params
    ).one()
    count, nulls = int(count), int(nulls)
    nans = int(strings) if numeric else 0
    if not numeric:
        top = [(_category(t, v), int(n)) for t, v, n in conn.execute(_TOP, params)]
        return NumericSummary(
            count, nulls, 0, None, None, None, None, [], [], [], int(categories), top
        )
    if not n:
        return NumericSummary(count, nulls, nans, None, None, None, None, [], [], [], 0, [])
    n = int(n)
    # Nearest rank on the sorted values, the same offsets as the SQLite store.
    offsets = [min(int(q * (n - 1) + 0.5), n - 1) for q in quantiles]
    ranked: dict[int, float] = dict(
        conn.execute(_RANKS, {**params, "offsets": sorted(set(offsets))}).all()
    )
    points = [(q, float(ranked[offset])) for q, offset in zip(quantiles, offsets, strict=True)]
    low, high = float(low), float(high)
    width = (high - low) / bins if high > low else 1.0
    edges = [low + i * width for i in range(bins)] + [high if high > low else low + 1.0]
    counts = [0] * bins
    histogram = conn.execute(_HISTOGRAM, {**params, "low": low, "width": width, "last": bins - 1})
    for bucket, hits in histogram:
        counts[int(bucket)] = int(hits)
    return NumericSummary(
        count, nulls, nans, float(mean), float(std), low, high, points, edges, counts,
        int(distinct), [],
    )  # fmt: skip
