"""The prediction log in SQLite (WAL): the embedded default.

All statements run on one dedicated thread that owns the connection, so the event
loop never blocks on disk and SQLite sees a single writer. WAL with
``synchronous=NORMAL`` survives a killed process (committed pages are in the WAL,
which the OS keeps); only a power loss can drop the last commits.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

from mlbackend_monitoring.core.model import (
    Cursor,
    Feedback,
    FeedbackResult,
    IngestResult,
    Page,
    PredictionCount,
    PredictionFilter,
    PredictionOutput,
    PredictionRecord,
    Scalar,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id   TEXT PRIMARY KEY,
    prediction_ns   INTEGER NOT NULL,
    model           TEXT NOT NULL,
    version         INTEGER NOT NULL,
    variant         TEXT NOT NULL,
    experiment      TEXT NOT NULL,
    shadow          INTEGER NOT NULL,
    request_id      TEXT NOT NULL,
    entity_key      TEXT NOT NULL,
    features        TEXT NOT NULL,
    output          TEXT NOT NULL,
    latency_us      INTEGER NOT NULL,
    status_code     INTEGER NOT NULL,
    error_message   TEXT NOT NULL,
    feature_service TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_by_model_time
    ON predictions (model, prediction_ns DESC, prediction_id DESC);
CREATE TABLE IF NOT EXISTS feedback (
    prediction_id TEXT PRIMARY KEY,
    label         TEXT NOT NULL,
    reward        REAL,
    feedback_ns   INTEGER NOT NULL,
    source        TEXT NOT NULL
);
"""


def _ns(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _from_ns(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1_000)


def _encode(value: Scalar) -> Any:
    """JSON that keeps the scalar's type (a bool is not an int, a time not a string)."""
    if type(value) is float:  # the usual feature: first, and by exact type
        return {"d": value if math.isfinite(value) else repr(value)}  # JSON has no nan/inf
    if value is None:
        return None
    if isinstance(value, bool):
        return {"b": value}
    if isinstance(value, int):
        return {"i": value}
    if isinstance(value, float):  # a subclass (numpy's float64): written as a plain float
        return _encode(float(value))
    if isinstance(value, datetime):
        return {"t": _ns(value)}
    return {"s": value}


def _decode(data: Any) -> Scalar:
    if data is None:
        return None
    ((tag, raw),) = data.items()
    if tag == "b":
        return bool(raw)
    if tag == "i":
        return int(raw)
    if tag == "d":
        return float(raw)
    if tag == "t":
        return _from_ns(int(raw))
    return str(raw)


# Keys sorted: one text per map whatever the order it came in. Values are tagged by
# ``_encode`` (a float as its repr), so orjson's null for NaN never applies.
_SORTED = orjson.OPT_SORT_KEYS


def _encode_map(values: dict[str, Scalar]) -> str:
    return orjson.dumps({k: _encode(v) for k, v in values.items()}, option=_SORTED).decode()


def _decode_map(text: str) -> dict[str, Scalar]:
    return {k: _decode(v) for k, v in json.loads(text).items()}


def _encode_output(output: PredictionOutput) -> str:
    data = {
        "label": _encode(output.label),
        "value": output.value,
        "probabilities": output.probabilities,
        "confidence": output.confidence,
        "decision_threshold": output.decision_threshold,
    }
    numbers = [output.value, output.confidence, output.decision_threshold]
    if all(math.isfinite(x) for x in (*output.probabilities, *numbers) if x is not None):
        return orjson.dumps(data).decode()
    # json, not orjson, for a NaN or infinite output: it must read back as itself, where
    # orjson would write null.
    return json.dumps({**data, "probabilities": list(output.probabilities)})


def _decode_output(text: str) -> PredictionOutput:
    data = json.loads(text)
    return PredictionOutput(
        label=_decode(data["label"]),
        value=data["value"],
        probabilities=tuple(data["probabilities"]),
        confidence=data["confidence"],
        decision_threshold=data["decision_threshold"],
    )


def _row(record: PredictionRecord) -> tuple[Any, ...]:
    return (
        record.prediction_id,
        _ns(record.prediction_time),
        record.model,
        record.version,
        record.variant,
        record.experiment,
        int(record.shadow),
        record.request_id,
        _encode_map(record.entity_key),
        _encode_map(record.features),
        _encode_output(record.output),
        record.latency // timedelta(microseconds=1),
        record.status_code,
        record.error_message,
        record.feature_service,
    )


def _record(row: sqlite3.Row) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=row["prediction_id"],
        prediction_time=_from_ns(row["prediction_ns"]),
        model=row["model"],
        version=row["version"],
        variant=row["variant"],
        experiment=row["experiment"],
        shadow=bool(row["shadow"]),
        request_id=row["request_id"],
        entity_key=_decode_map(row["entity_key"]),
        features=_decode_map(row["features"]),
        output=_decode_output(row["output"]),
        latency=timedelta(microseconds=row["latency_us"]),
        status_code=row["status_code"],
        error_message=row["error_message"],
        feature_service=row["feature_service"],
    )


def _where(where: PredictionFilter) -> tuple[str, list[Any]]:
    clauses = ["p.model = ?"]
    params: list[Any] = [where.model]
    if where.version is not None:
        clauses.append("p.version = ?")
        params.append(where.version)
    if where.variant:
        clauses.append("p.variant = ?")
        params.append(where.variant)
    if where.start_time is not None:
        clauses.append("p.prediction_ns >= ?")
        params.append(_ns(where.start_time))
    if where.end_time is not None:
        clauses.append("p.prediction_ns < ?")
        params.append(_ns(where.end_time))
    if not where.include_shadow:
        clauses.append("p.shadow = 0")
    return " AND ".join(clauses), params


class SqlitePredictionLog:
    """``PredictionLog`` on a SQLite file.

    ``executor`` (one thread: it owns the connection) may be shared with other
    background work of the service, such as decoding the records it writes.
    """

    def __init__(self, path: Path, executor: ThreadPoolExecutor | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="prediction-log")
        self._connection = self._executor.submit(self._open, path).result()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        return connection

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, work, self._connection)

    async def ingest(self, records: Sequence[PredictionRecord]) -> IngestResult:
        def write(db: sqlite3.Connection) -> int:
            rows = [_row(r) for r in records]  # encoded on the log's thread, off the loop
            with _transaction(db):
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                return db.total_changes - before

        accepted = await self._run(write)
        return IngestResult(accepted=accepted, duplicates=len(records) - accepted)

    async def page(self, where: PredictionFilter, limit: int, after: Cursor | None) -> Page:
        sql, params = _where(where)
        if after is not None:
            sql += " AND (p.prediction_ns, p.prediction_id) < (?, ?)"
            params += [_ns(after.prediction_time), after.prediction_id]
        query = (
            f"SELECT p.* FROM predictions p WHERE {sql} "
            "ORDER BY p.prediction_ns DESC, p.prediction_id DESC LIMIT ?"
        )
        rows = await self._run(lambda db: db.execute(query, [*params, limit + 1]).fetchall())
        records = [_record(row) for row in rows[:limit]]
        more = len(rows) > limit
        last = records[-1] if records and more else None
        cursor = Cursor(last.prediction_time, last.prediction_id) if last else None
        return Page(records, cursor)

    async def count(self, where: PredictionFilter) -> list[PredictionCount]:
        sql, params = _where(where)
        query = (
            "SELECT p.version, p.variant, COUNT(*) AS n, "
            "SUM(p.status_code != 0) AS errors, COUNT(f.prediction_id) AS labeled "
            "FROM predictions p LEFT JOIN feedback f USING (prediction_id) "
            f"WHERE {sql} GROUP BY p.version, p.variant ORDER BY p.version, p.variant"
        )
        rows = await self._run(lambda db: db.execute(query, params).fetchall())
        return [
            PredictionCount(
                where.model, row["version"], row["variant"], row["n"], row["errors"], row["labeled"]
            )
            for row in rows
        ]

    async def record_feedback(self, feedback: Sequence[Feedback]) -> FeedbackResult:
        rows = [
            (
                f.prediction_id,
                json.dumps(_encode(f.label)),
                f.reward,
                _ns(f.feedback_time),
                f.source,
            )
            for f in feedback
        ]
        ids = [f.prediction_id for f in feedback]

        def write(db: sqlite3.Connection) -> int:
            with _transaction(db):
                db.executemany(
                    "INSERT INTO feedback VALUES (?,?,?,?,?) ON CONFLICT (prediction_id) DO UPDATE "
                    "SET label = excluded.label, reward = excluded.reward, "
                    "feedback_ns = excluded.feedback_ns, source = excluded.source",
                    rows,
                )
                marks = ",".join("?" * len(set(ids)))
                found = db.execute(
                    f"SELECT COUNT(*) FROM predictions WHERE prediction_id IN ({marks})",
                    sorted(set(ids)),
                ).fetchone()
                return int(found[0])

        matched_ids = await self._run(write) if rows else 0
        # Counted per distinct prediction: repeated feedback for one id is one outcome.
        distinct = len(set(ids))
        return FeedbackResult(matched=matched_ids, unmatched=distinct - matched_ids)

    async def close(self) -> None:
        await self._run(lambda db: db.close())
        self._executor.shutdown(wait=True)


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error: a batch is all or nothing."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
