"""The Arrow form of historical retrieval: record batches built from read results hold
the same values, statuses and event times as the cells, for every dtype and row shape;
entity tables are read into the same query as entity rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from mlbackend.features.v1 import features_pb2 as f
from mlbackend_clients.features import arrow_stream
from mlbackend_features.core import codec, pit
from mlbackend_features.core.model import (
    Cell,
    DType,
    HistoricalChunk,
    JoinedRows,
    OutputColumn,
    PresentRow,
    Status,
    StoredRows,
)
from mlbackend_features.transport import arrow
from mlbackend_runtime.errors import InvalidInput

T = 1_767_225_600_000_000  # 2026-01-01 in µs
SCHEMA = (
    OutputColumn(name="d", dtype=DType.DOUBLE),
    OutputColumn(name="i", dtype=DType.INT64),
    OutputColumn(name="s", dtype=DType.STRING),
    OutputColumn(name="b", dtype=DType.BOOL),
    OutputColumn(name="t", dtype=DType.TIMESTAMP),
)
WHEN = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def _cells(rows: Sequence[Sequence[Cell]]) -> list[list[tuple[object, str, object]]]:
    """What the rows say, cell by cell, with event times as aware datetimes."""
    out = []
    for row in rows:
        cells: list[tuple[object, str, object]] = []
        for value, status, event_us in row:
            if status is Status.PRESENT and value is None:
                status = Status.NULL_VALUE
            event = None if event_us is None else datetime.fromtimestamp(event_us / 1e6, UTC)
            cells.append((value, status.value, event))
        out.append(cells)
    return out


def _from_batch(batch: pa.RecordBatch) -> list[list[tuple[object, str, object]]]:
    columns = batch.to_pydict()
    triples = [
        zip(
            columns[c.name],
            columns[c.name + "__status"],
            columns[c.name + "__event_time"],
            strict=True,
        )
        for c in SCHEMA
    ]
    return [list(row) for row in zip(*triples, strict=True)]


def _round_trip(rows: list[list[Cell] | PresentRow]) -> pa.RecordBatch:
    data = arrow.batch_bytes(arrow.record_batch(SCHEMA, rows))
    with pa.ipc.open_stream(data) as reader:
        table = reader.read_all()
    batches = table.to_batches()
    assert len(batches) == 1
    return batches[0]


def _same(
    expected: list[list[tuple[object, str, object]]], got: list[list[tuple[object, str, object]]]
) -> None:
    assert len(expected) == len(got)
    for want_row, got_row in zip(expected, got, strict=True):
        for want, cell in zip(want_row, got_row, strict=True):
            if isinstance(want[0], float) and math.isnan(want[0]):
                assert isinstance(cell[0], float) and math.isnan(cell[0])
                assert want[1:] == cell[1:]
            else:
                assert want == cell


STORED = PresentRow([1.5, -7, "é ✓", True, WHEN], T)
NULLS = PresentRow([None, 3, None, False, None], T + 1)
MISSING = [Cell(None, Status.NOT_FOUND, None)] * 5
EXPIRED = [Cell(None, Status.EXPIRED, T - 10)] * 5


def test_uniform_rows_keep_values_statuses_and_event_times() -> None:
    rows: list[list[Cell] | PresentRow] = [STORED, MISSING, NULLS, EXPIRED, MISSING, STORED]
    batch = _round_trip(rows)
    assert batch.schema.names[:3] == ["d", "d__status", "d__event_time"]
    assert [batch.schema.field(c.name).type for c in SCHEMA] == [
        pa.float64(), pa.int64(), pa.string(), pa.bool_(), pa.timestamp("us", tz="UTC"),
    ]  # fmt: skip
    assert pa.types.is_dictionary(batch.schema.field("d__status").type)
    _same(_cells(rows), _from_batch(batch))


def test_rows_of_mixed_cells_go_cell_by_cell() -> None:
    mixed = [
        Cell(math.nan, Status.PRESENT, T),
        Cell(2**63 - 1, Status.REQUEST_INPUT, None),
        Cell("x", Status.COMPUTED, None),
        Cell(None, Status.NULL_VALUE, T + 5),
        Cell(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), Status.PRESENT, -1),
    ]
    rows: list[list[Cell] | PresentRow] = [mixed, STORED, MISSING, mixed]
    _same(_cells(rows), _from_batch(_round_trip(rows)))


# Stored rows as the offline store returns them: (event_us, payload) or None.
FIELDS = [("d", DType.DOUBLE), ("i", DType.INT64), ("s", DType.STRING), ("b", DType.BOOL),
          ("t", DType.TIMESTAMP)]  # fmt: skip
CLEAN: list[tuple[int, str] | None] = [
    (T, codec.encode_values({"d": 1.5, "i": -7, "s": 'é ✓\n"q"', "b": True, "t": WHEN})),
    None,
    (T + 1, codec.encode_values({"d": None, "i": 3, "s": None, "b": False, "t": None})),
    (T - 10, codec.encode_values({"d": 2.0, "i": 1, "s": "x", "b": True, "t": WHEN})),
    (T + 2, '{"i":2,"gone":"a feature no longer read","d":4}'),  # d stored as an integer
    (T + 3, "{}"),
    (T + 4, codec.encode_values({"d": -0.0, "i": 2**63 - 1, "s": "", "b": False, "t": 0})),
    (T + 5, '{\n  "d": 1.0,\n  "s": "hand-written"\n}'),  # line breaks between tokens
]
# Rows the row decoder coerces (or reads as null) and Arrow's JSON reader refuses.
COERCED = [
    '{"d":"nan"}',
    '{"d":"-inf"}',
    '{"i":2.5}',
    '{"i":true}',
    '{"i":18446744073709551616}',
    '{"s":5}',
    '{"b":1}',
    '{"d":true}',
    '{"t":"2026-01-01"}',
]


def _stored(found: list[tuple[int, str] | None], ttl_us: int) -> StoredRows:
    as_of = [T + 100] * len(found)
    return StoredRows(JoinedRows.of(found), as_of, codec.RowDecoder(FIELDS), ttl_us, len(found))


@pytest.mark.parametrize("ttl_us", [0, 100, 109])
def test_stored_rows_decode_by_column_as_the_row_decoder_does(ttl_us: int) -> None:
    stored = _stored(CLEAN, ttl_us)
    assert arrow._parse_payloads(stored.joined, FIELDS) is not None  # the columnar path
    by_column = arrow.stored_record_batch(SCHEMA, stored)
    by_row = arrow.record_batch(SCHEMA, pit.cells_of(stored))
    assert by_column.equals(by_row)
    _same(_cells(pit.cells_of(stored)), _from_batch(by_column))
    statuses = by_column.column("d__status").to_pylist()
    if ttl_us == 100:  # T - 10 is 110 µs before the as-of time: past the TTL
        assert statuses[3] == Status.EXPIRED.value
    assert statuses[1] == Status.NOT_FOUND.value and statuses[2] == Status.NULL_VALUE.value


@pytest.mark.parametrize("payload", COERCED)
def test_stored_rows_arrow_cannot_read_as_is_go_through_the_row_decoder(payload: str) -> None:
    found = [*CLEAN, (T + 5, payload)]
    assert arrow._parse_payloads(JoinedRows.of(found), FIELDS) is None
    stored = _stored(found, 0)
    by_column = arrow.stored_record_batch(SCHEMA, stored)
    _same(_cells(pit.cells_of(stored)), _from_batch(by_column))


def _table(**columns: pa.Array) -> bytes:
    return arrow_stream(pa.table(columns))


def test_entity_table_reads_keys_times_and_inputs_by_name() -> None:
    # Nanoseconds (pandas' unit) below a microsecond are dropped, not refused.
    naive = pa.array([T * 1_000 + 999, None], pa.timestamp("ns"))
    request = f.GetHistoricalFeaturesRequest(
        feature_service="svc",
        chunk_size=7,
        entity_table=_table(
            user_id=pa.array([1, 2], pa.int64()),
            country=pa.array(["DE", "FR"]),
            event_timestamp=naive,
            amount=pa.array([1.5, None]),
            at=pa.array([WHEN, None], pa.timestamp("ms", tz="Europe/Berlin")),
        ),
    )
    query = arrow.historical_query(request, {"amount", "at"})
    assert query.field == "entity_table" and query.chunk_size == 7
    assert query.feature_service == "svc"
    first, second = query.rows
    assert first.entity_key == {"user_id": 1, "country": "DE"}
    assert first.event_us == T  # a time without a zone is UTC
    assert first.request_inputs == {"amount": 1.5, "at": WHEN.replace(microsecond=0)}
    assert second.event_us is None and second.request_inputs == {"amount": None, "at": None}


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (f.GetHistoricalFeaturesRequest(entity_table=b"not arrow"), "entity_table"),
        (
            f.GetHistoricalFeaturesRequest(
                entity_rows=[f.EntityRow()], entity_table=_table(user_id=pa.array([1]))
            ),
            "entity_table",
        ),
        (
            f.GetHistoricalFeaturesRequest(
                entity_table=_table(user_id=pa.array([1]), event_timestamp=pa.array(["2026"]))
            ),
            "entity_table.event_timestamp",
        ),
        (
            f.GetHistoricalFeaturesRequest(entity_table=_table(user_id=pa.array([1, None, 3]))),
            "entity_table.user_id[1]",
        ),
        (
            f.GetHistoricalFeaturesRequest(entity_table=_table(amount=pa.array([1.0]))),
            "entity_table",
        ),
    ],
)
def test_a_bad_entity_table_is_a_field_error(
    request_: f.GetHistoricalFeaturesRequest, field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        arrow.historical_query(request_, {"amount"})
    assert [v.field for v in raised.value.violations] == [field]


def test_result_format_is_checked() -> None:
    assert arrow.wants_arrow(f.GetHistoricalFeaturesRequest(result_format=f.RESULT_FORMAT_ARROW))
    assert not arrow.wants_arrow(f.GetHistoricalFeaturesRequest())
    assert not arrow.wants_arrow(f.GetHistoricalFeaturesRequest(result_format=f.RESULT_FORMAT_ROWS))
    with pytest.raises(InvalidInput):
        arrow.wants_arrow(f.GetHistoricalFeaturesRequest(result_format=99))  # type: ignore[arg-type]


def test_a_run_of_stored_rows_is_sent_as_messages_of_the_requested_size() -> None:
    stored = _stored(CLEAN, 100)._replace(message_rows=3)
    chunk = HistoricalChunk(SCHEMA, 12, [], "svc@1", stored)
    messages = list(arrow.chunk_pbs(chunk, SCHEMA))
    assert [m.start_row_index for m in messages] == [12, 15, 18]
    assert [len(m.schema) for m in messages] == [len(SCHEMA), 0, 0]
    assert [m.feature_service for m in messages] == ["svc@1", "", ""]
    tables = [pa.ipc.open_stream(m.arrow).read_all() for m in messages]
    assert [t.num_rows for t in tables] == [3, 3, len(CLEAN) - 6]
    whole = pa.Table.from_batches([arrow.stored_record_batch(SCHEMA, stored)])
    assert pa.concat_tables(tables).equals(whole)
