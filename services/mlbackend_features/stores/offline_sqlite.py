"""Offline history and commit log in one SQLite file (WAL, synchronous=FULL).

``batches`` is the commit log (one row per acknowledged batch, its sequence is the
rowid); ``history`` holds every written row. The as-of join is one indexed seek per
entity row, in SQL, with the query rows bound as the parameters of a VALUES list; for
Arrow reads (``as_of_lines``) SQLite also aggregates what it found into JSON lines.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from mlbackend_features.core.model import Commit, CommittedBatch, JoinedRows, Record, now_us
from mlbackend_features.stores.offline import NumericSummary, OfflineStore
from mlbackend_features.stores.sqlite_db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    view TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    committed_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    view TEXT NOT NULL,
    entity TEXT NOT NULL,
    event_us INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    row_idx INTEGER NOT NULL,
    vals TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_asof ON history (view, entity, event_us, seq, row_idx);
CREATE INDEX IF NOT EXISTS history_seq ON history (seq, row_idx);
CREATE INDEX IF NOT EXISTS history_time ON history (view, event_us);
CREATE TABLE IF NOT EXISTS markers (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# Query rows bound as parameters of a VALUES list: a third faster than one JSON
# parameter read back with json_each (measured on 10,000 rows). A batch of 500 rows
# (1,501 parameters) stays far below SQLite's parameter limit.
_AS_OF_BATCH = 500


def _as_of_sql(rows: int) -> str:
    values = ",".join(["(?,?,?)"] * rows)
    return f"""
WITH q(idx, entity, ts) AS (VALUES {values})
SELECT q.idx, h.event_us, h.vals
FROM q JOIN history h ON h.rowid = (
    SELECT rowid FROM history
    WHERE view = ? AND entity = q.entity AND event_us <= q.ts
    ORDER BY event_us DESC, seq DESC, row_idx DESC LIMIT 1
)
"""


_AS_OF_FULL = _as_of_sql(_AS_OF_BATCH)


def _as_of_lines_sql(rows: int) -> str:
    """The same join aggregated into one row: the query rows' positions, the found
    rows' event times ('' where none) and their payloads one per line ('{}' where none).
    One step of the statement does the whole join without the GIL, where a row at a
    time hands it back for every row; 14.5 against 19.3 ms for 10,000 rows here."""
    values = ",".join(["(?,?,?)"] * rows)
    return f"""
WITH q(idx, entity, ts) AS (VALUES {values})
SELECT group_concat(q.idx), group_concat(coalesce(h.event_us, '')),
       group_concat(coalesce(h.vals, '{{}}'), char(10))
FROM q LEFT JOIN history h ON h.rowid = (
    SELECT rowid FROM history
    WHERE view = ? AND entity = q.entity AND event_us <= q.ts
    ORDER BY event_us DESC, seq DESC, row_idx DESC LIMIT 1
)
"""


_AS_OF_LINES_FULL = _as_of_lines_sql(_AS_OF_BATCH)

_READER_CACHE_KIB = 64 * 1024

_LATEST_IN_RANGE = """
SELECT entity, event_us, vals FROM (
    SELECT entity, event_us, vals, ROW_NUMBER() OVER (
        PARTITION BY entity ORDER BY event_us DESC, seq DESC, row_idx DESC
    ) AS rn
    FROM history
    WHERE view = ?1 AND event_us >= ?2 AND event_us < ?3 AND entity > ?4
)
WHERE rn = 1 ORDER BY entity LIMIT ?5
"""


@functools.cache
def _positions(count: int) -> str:
    return ",".join(map(str, range(count)))


class SqliteOfflineStore(OfflineStore):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self._writer = Database(path, "FULL")
        self._writer.run(lambda c: c.executescript(_SCHEMA))
        # A second connection: WAL lets historical reads run beside a write. Its page
        # cache is larger than SQLite's 2 MiB default: a historical retrieval seeks all
        # over the history index and table.
        self._reader = Database(path, "FULL")
        self._reader.run(lambda c: c.execute(f"PRAGMA cache_size=-{_READER_CACHE_KIB}"))

    async def append(self, batch_id: str, view: str, records: Sequence[Record]) -> Commit:
        def work(conn: sqlite3.Connection) -> Commit:
            row = conn.execute(
                "SELECT seq, row_count FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if row is not None:
                return Commit(int(row[0]), int(row[1]), duplicate=True)
            cursor = conn.execute(
                "INSERT INTO batches (batch_id, view, row_count, committed_us) VALUES (?,?,?,?)",
                (batch_id, view, len(records), now_us()),
            )
            seq = int(cursor.lastrowid or 0)
            conn.executemany(
                "INSERT INTO history (view, entity, event_us, seq, row_idx, vals) "
                "VALUES (?,?,?,?,?,?)",
                [(view, r.entity, r.event_us, seq, i, r.payload) for i, r in enumerate(records)],
            )
            return Commit(seq, len(records), duplicate=False)

        return await asyncio.to_thread(self._writer.transaction, work)

    async def committed_after(self, sequence: int, limit: int) -> list[CommittedBatch]:
        def work(conn: sqlite3.Connection) -> list[CommittedBatch]:
            batches = conn.execute(
                "SELECT seq, batch_id, view FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
                (sequence, limit),
            ).fetchall()
            out: list[CommittedBatch] = []
            for seq, batch_id, view in batches:
                rows = conn.execute(
                    "SELECT entity, event_us, vals FROM history WHERE seq = ? ORDER BY row_idx",
                    (seq,),
                ).fetchall()
                out.append(CommittedBatch(seq, batch_id, view, [Record(*r) for r in rows]))
            return out

        return await asyncio.to_thread(self._reader.run, work)

    async def as_of(
        self, view: str, queries: Sequence[tuple[str, int]]
    ) -> list[tuple[int, str] | None]:
        def work(conn: sqlite3.Connection) -> list[tuple[int, str] | None]:
            out: list[tuple[int, str] | None] = [None] * len(queries)
            for start in range(0, len(queries), _AS_OF_BATCH):
                batch = queries[start : start + _AS_OF_BATCH]
                sql = _AS_OF_FULL if len(batch) == _AS_OF_BATCH else _as_of_sql(len(batch))
                params: list[object] = [
                    x for i, (entity, ts) in enumerate(batch, start) for x in (i, entity, ts)
                ]
                params.append(view)
                for idx, event_us, vals in conn.execute(sql, params):
                    out[idx] = (event_us, vals)
            return out

        return await asyncio.to_thread(self._reader.run, work)

    async def as_of_lines(self, view: str, queries: Sequence[tuple[str, int]]) -> JoinedRows:
        def work(conn: sqlite3.Connection) -> JoinedRows | None:
            event_us: list[int | None] = []
            lines: list[bytes] = []
            for start in range(0, len(queries), _AS_OF_BATCH):
                batch = queries[start : start + _AS_OF_BATCH]
                full = len(batch) == _AS_OF_BATCH
                sql = _AS_OF_LINES_FULL if full else _as_of_lines_sql(len(batch))
                params: list[object] = [
                    x for i, (entity, ts) in enumerate(batch) for x in (i, entity, ts)
                ]
                params.append(view)
                order, times, text = conn.execute(sql, params).fetchone()
                # SQLite aggregates in the order it visits the query rows, which is theirs;
                # a payload with a line break of its own would shift the lines. Either
                # surprise sends the call to the row-at-a-time join.
                if order != _positions(len(batch)) or text.count("\n") != len(batch) - 1:
                    return None
                event_us.extend(int(t) if t else None for t in times.split(","))
                lines.append(text.encode())
            return JoinedRows(event_us, b"\n".join(lines))

        if not queries:
            return JoinedRows([], b"", [])
        joined = await asyncio.to_thread(self._reader.run, work)
        return joined if joined is not None else await super().as_of_lines(view, queries)

    async def latest_in_range(
        self, view: str, start_us: int, end_us: int, after_entity: str, limit: int
    ) -> list[Record]:
        def work(conn: sqlite3.Connection) -> list[Record]:
            rows = conn.execute(_LATEST_IN_RANGE, (view, start_us, end_us, after_entity, limit))
            return [Record(*r) for r in rows]

        return await asyncio.to_thread(self._reader.run, work)

    async def count_entities(self, view: str, start_us: int, end_us: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(DISTINCT entity) FROM history "
                "WHERE view = ? AND event_us >= ? AND event_us < ?",
                (view, start_us, end_us),
            ).fetchone()
            return int(row[0])

        return await asyncio.to_thread(self._reader.run, work)

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
        def work(conn: sqlite3.Connection) -> NumericSummary:
            return _summary(conn, view, feature, numeric, start_us, end_us, quantiles, bins)

        return await asyncio.to_thread(self._reader.run, work)

    async def purge_before(self, view: str, cutoff_us: int, limit: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM history WHERE rowid IN (SELECT rowid FROM history "
                "WHERE view = ? AND event_us < ? LIMIT ?)",
                (view, cutoff_us, limit),
            )
            return int(cursor.rowcount)

        return await asyncio.to_thread(self._writer.transaction, work)

    async def get_marker(self, name: str) -> int | None:
        def work(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT value FROM markers WHERE name = ?", (name,)).fetchone()
            return None if row is None else int(row[0])

        return await asyncio.to_thread(self._reader.run, work)

    async def set_marker(self, name: str, value: int) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO markers (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

        await asyncio.to_thread(self._writer.transaction, work)

    async def close(self) -> None:
        self._reader.close()
        self._writer.close()


def _summary(
    conn: sqlite3.Connection,
    view: str,
    feature: str,
    numeric: bool,
    start_us: int,
    end_us: int,
    quantiles: Sequence[float],
    bins: int,
) -> NumericSummary:
    # Feature names are validated identifiers, so the JSON path is safe to inline.
    source = f"""
        SELECT json_extract(vals, '$.{feature}') AS x, json_type(vals, '$.{feature}') AS t
        FROM history WHERE view = :view AND event_us >= :start AND event_us < :end
    """
    params = {"view": view, "start": start_us, "end": end_us}
    count, nulls, nans = conn.execute(
        f"SELECT COUNT(*), SUM(t IS NULL OR t = 'null'), SUM(t = 'text' AND :numeric) "
        f"FROM ({source})",
        {**params, "numeric": numeric},
    ).fetchone()
    count, nulls, nans = int(count), int(nulls or 0), int(nans or 0)
    if not numeric:
        top = conn.execute(
            f"SELECT x, COUNT(*) AS n FROM ({source}) WHERE x IS NOT NULL "
            "GROUP BY x ORDER BY n DESC, x LIMIT 20",
            params,
        ).fetchall()
        distinct = conn.execute(
            f"SELECT COUNT(DISTINCT x) FROM ({source}) WHERE x IS NOT NULL", params
        ).fetchone()[0]
        return NumericSummary(
            count, nulls, 0, None, None, None, None, [], [], [], int(distinct),
            [(v, int(n)) for v, n in top],
        )  # fmt: skip
    finite = f"SELECT CAST(x AS REAL) AS x FROM ({source}) WHERE t IN ('integer', 'real')"
    n, mean, mean_sq, low, high, distinct = conn.execute(
        f"SELECT COUNT(*), AVG(x), AVG(x * x), MIN(x), MAX(x), COUNT(DISTINCT x) FROM ({finite})",
        params,
    ).fetchone()
    if not n:
        return NumericSummary(count, nulls, nans, None, None, None, None, [], [], [], 0, [])
    std = max(mean_sq - mean * mean, 0.0) ** 0.5
    points: list[tuple[float, float]] = []
    for q in quantiles:
        # Nearest rank on the sorted values, found by the engine (ORDER BY + OFFSET).
        offset = min(int(q * (n - 1) + 0.5), n - 1)
        (value,) = conn.execute(
            f"SELECT x FROM ({finite}) ORDER BY x LIMIT 1 OFFSET :off", {**params, "off": offset}
        ).fetchone()
        points.append((q, float(value)))
    width = (high - low) / bins if high > low else 1.0
    edges = [low + i * width for i in range(bins)] + [high if high > low else low + 1.0]
    counts = [0] * bins
    for bucket, hits in conn.execute(
        f"SELECT MIN(CAST((x - :low) / :width AS INTEGER), :last) AS b, COUNT(*) "
        f"FROM ({finite}) GROUP BY b",
        {**params, "low": low, "width": width, "last": bins - 1},
    ):
        counts[int(bucket)] = int(hits)
    return NumericSummary(
        count, nulls, nans, float(mean), std, float(low), float(high), points, edges, counts,
        int(distinct), [],
    )  # fmt: skip
