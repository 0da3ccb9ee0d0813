"""The read path's fast pieces agree with the plain definitions they replace.

- Response rows are written as wire bytes: parsed back they must equal the messages
  built field by field, for every kind of value, status and event time.
- Stored rows decode straight into cells: the same cells as decoding then applying the
  point-in-time rules.
- One int64 join key is encoded without the JSON encoder: the same strings.
- Read plans are cached per request shape: a definition change must drop them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlbackend.common.v1 import common_pb2
from mlbackend.features.v1 import features_pb2 as pb
from mlbackend_features.core import codec, pit, validation
from mlbackend_features.core import service as service_module
from mlbackend_features.core.model import (
    MICROS,
    Actor,
    Cell,
    DefinitionSet,
    DType,
    Entity,
    Feature,
    FeatureView,
    HistoricalChunk,
    JoinKey,
    OnlineQuery,
    OutputColumn,
    PresentRow,
    ReadResult,
    Scalar,
    Status,
    WriteBatch,
    WriteRow,
)
from mlbackend_features.core.service import FeatureStore
from mlbackend_features.stores.definitions import SqliteDefinitionStore
from mlbackend_features.stores.offline_sqlite import SqliteOfflineStore
from mlbackend_features.stores.online_sqlite import SqliteOnlineStore
from mlbackend_features.transport import convert
from mlbackend_runtime.errors import InvalidInput

T = 1_767_225_600 * MICROS  # 2026-01-01


# --- response rows on the wire ----------------------------------------------------------


def reference_row(cells: Sequence[Cell]) -> pb.FeatureValueRow:
    """A row built message by message, the way the bytes must parse."""
    row = pb.FeatureValueRow()
    for value, status, event_us in cells:
        item = row.values.add(status=convert._STATUS_PB[status])
        if value is not None:
            item.value.CopyFrom(convert.value_pb(value))
        if event_us is not None:
            item.event_time.CopyFrom(convert.timestamp(event_us))
    return row


def every_kind_of_cell() -> list[list[Cell]]:
    before_1970 = datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    rows: list[list[Cell]] = [
        [Cell(v, Status.PRESENT, T + 123_456) for v in (0.0, -0.0, 1.5, -2.25e300, 5e-324)],
        [Cell(v, Status.PRESENT, T) for v in (math.inf, -math.inf, math.nan)],
        [Cell(v, Status.PRESENT, T) for v in (0, 1, 127, 128, 16_383, 16_384, 2**63 - 1)],
        [Cell(v, Status.PRESENT, -1) for v in (-1, -128, -(2**63))],
        [Cell(v, Status.PRESENT, 0) for v in ("", "a", "é ✓ 𝄞", "x" * 200, "y" * 70_000)],
        [Cell(True, Status.PRESENT, 1), Cell(False, Status.PRESENT, 999_999)],
        [Cell(datetime.fromtimestamp(0, UTC), Status.PRESENT, T)],
        [Cell(before_1970, Status.PRESENT, before_1970.microsecond - 2_208_988_800 * MICROS)],
        [Cell(datetime(2026, 1, 1, 12, tzinfo=UTC), Status.COMPUTED, None)],
        [Cell(None, Status.NULL_VALUE, T), Cell(1.0, Status.PRESENT, T)],
        [Cell(None, Status.NOT_FOUND, None)] * 3,
        [Cell(None, Status.EXPIRED, T - 7), Cell(None, Status.EXPIRED, T - 7)],
        [Cell(3, Status.REQUEST_INPUT, None), Cell(2.0, Status.COMPUTED, None)],
        [],
    ]
    # Mixed statuses and event times inside one row (several views, transforms).
    rows.append([cell for row in rows for cell in row[:1]])
    return rows


def same_rows(got: Sequence[pb.FeatureValueRow], want: Sequence[pb.FeatureValueRow]) -> bool:
    # NaN != NaN: compare the serialized messages (deterministic for equal content).
    def wire(row: pb.FeatureValueRow) -> bytes:
        return row.SerializeToString(deterministic=True)

    return [wire(r) for r in got] == [wire(r) for r in want]


def test_online_rows_parse_to_the_messages_built_field_by_field() -> None:
    rows = every_kind_of_cell()
    response = convert.online_result_pb(ReadResult((), rows, "svc@1"))
    assert response.feature_service == "svc@1"
    assert same_rows(response.rows, [reference_row(r) for r in rows])
    # Fields the reference sets explicitly are present on the wire too.
    first = response.rows[0].values[0]
    assert first.HasField("event_time") and first.value.WhichOneof("kind") == "double_value"
    assert response.rows[4].values[0].value.WhichOneof("kind") == "string_value"
    assert response.rows[3].values[0].event_time.seconds == -1  # -1 µs: second -1, 999,999 µs
    assert response.rows[3].values[0].event_time.nanos == 999_999_000
    assert not response.rows[10].values[0].HasField("event_time")
    assert not response.rows[10].values[0].HasField("value")


def test_the_schema_is_the_one_built_field_by_field_every_time() -> None:
    schema = (
        OutputColumn(name="v:a", dtype=DType.DOUBLE, description="a"),
        OutputColumn(name="v:b", dtype=DType.INT64, nullable=False),
    )
    want = convert.schema_pb(schema)
    for _ in range(2):  # the second call takes the cached bytes
        response = convert.online_result_pb(ReadResult(schema, [], ""))
        assert list(response.schema) == want
        chunk = convert.historical_chunk_pb(HistoricalChunk(schema, 0, [], "s@2"))
        assert list(chunk.schema) == want and chunk.feature_service == "s@2"
    assert not convert.historical_chunk_pb(HistoricalChunk((), 9, [], "")).schema


def test_present_rows_parse_to_the_messages_built_field_by_field() -> None:
    before_1970 = datetime(1900, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    rows = [
        PresentRow([0.0, -0.0, 1.5, -2.25e300, 5e-324, math.inf, -math.inf, math.nan], T + 1),
        PresentRow([0, 1, 127, 128, 16_383, 16_384, 2**63 - 1, -1, -128, -(2**63)], T),
        PresentRow(["", "é ✓ 𝄞", "y" * 70_000, True, False, before_1970], -1),
        PresentRow([datetime.fromtimestamp(0, UTC), 2.5, 300], 0),
        PresentRow([1.0, None, 3, None], 999_999),  # null values: another status
        PresentRow([None], T),
        PresentRow([], T),
    ]
    for tag, build in (
        (convert._ONLINE_ROWS, lambda: convert.online_result_pb(ReadResult((), rows, "")).rows),
        (
            convert._HISTORICAL_ROWS,
            lambda: convert.historical_chunk_pb(HistoricalChunk((), 0, rows, "")).rows,
        ),
    ):
        assert same_rows(build(), [reference_row(list(r)) for r in rows]), tag


def test_recently_decoded_rows_are_shared_bounded_and_encoded_once() -> None:
    decoder = codec.RowDecoder([("x", DType.DOUBLE), ("n", DType.INT64)])
    payload = '{"x":1.5,"n":2}'
    row = decoder.present_recent(payload, T)
    assert decoder.present_recent(payload, T) is row
    assert list(row) == list(decoder.present(payload, T))
    assert decoder.present_recent(payload, T + 1) is not row  # another event time
    first = convert.online_result_pb(ReadResult((), [row], "")).rows
    assert row.wire is not None
    assert convert.online_result_pb(ReadResult((), [row, row], "")).rows == [*first, *first]
    assert same_rows(first, [reference_row(list(row))])
    for i in range(codec.RECENT_ROWS):
        decoder.present_recent(f'{{"x":{i}.5}}', T)
    assert len(decoder._recent) == codec.RECENT_ROWS
    assert decoder.present_recent(payload, T) is not row  # the oldest went first


def test_the_decoders_of_a_store_share_one_bound_and_keep_their_rows_apart() -> None:
    recent: codec.RecentRows = {}
    doubles = codec.RowDecoder([("x", DType.DOUBLE)], recent)
    strings = codec.RowDecoder([("x", DType.STRING)], recent)
    payload = '{"x":"1.5"}'
    assert doubles.present_recent(payload, T).values == [None]  # not a double: null
    assert strings.present_recent(payload, T).values == ["1.5"]
    assert len(recent) == 2
    for i in range(codec.RECENT_ROWS):
        strings.present_recent(f'{{"x":"{i}"}}', T)
    assert len(recent) == codec.RECENT_ROWS


def test_historical_rows_and_shared_row_lists() -> None:
    shared = [Cell(None, Status.NOT_FOUND, None)] * 2
    present = [Cell(1.0, Status.PRESENT, 0), Cell(7, Status.PRESENT, 0)]
    rows = [shared, present, shared, present]
    chunk = convert.historical_chunk_pb(HistoricalChunk((), 5, rows, ""))
    assert chunk.start_row_index == 5
    assert same_rows(chunk.rows, [reference_row(r) for r in rows])
    assert chunk.rows[1].values[0].HasField("event_time")  # epoch itself is a time


# --- stored rows into cells -------------------------------------------------------------


FIELDS = [
    ("d", DType.DOUBLE),
    ("i", DType.INT64),
    ("s", DType.STRING),
    ("b", DType.BOOL),
    ("t", DType.TIMESTAMP),
    ("absent", DType.DOUBLE),
]


@pytest.mark.parametrize(
    "stored",
    [
        {"d": 1.5, "i": 3, "s": "x", "b": True, "t": T},
        {"d": 2, "i": 2.5, "s": 4, "b": 1, "t": "no"},  # left by forced dtype changes
        {"d": "nan", "i": None, "s": None, "b": False, "t": -5},
        {"d": "inf", "i": -(2**63), "s": "é", "b": None},
        {"d": "-inf", "i": 2**63 - 1, "t": -(2**40)},
    ],
)
@pytest.mark.parametrize("as_of_offset", [0, 3_600 * MICROS, 3_600 * MICROS + 1])
def test_online_cells_equal_decoding_then_the_pit_rules(
    stored: dict[str, object], as_of_offset: int
) -> None:
    payload = json.dumps(stored)
    names = [name for name, _ in FIELDS]
    candidate = pit.Candidate(T, codec.decode_fields(payload, FIELDS))
    want = pit.cells(candidate, names, T + as_of_offset, 3_600 * MICROS)
    decoder = codec.RowDecoder(FIELDS)
    got, none = pit.online_cells([(T, payload), None], T + as_of_offset, decoder, 3_600 * MICROS)
    assert [repr(c) for c in got] == [repr(c) for c in want]  # repr: NaN-safe
    assert all(type(c) is Cell for c in got)
    assert none == pit.missing_cells(len(FIELDS))
    # The loop of a historical retrieval gives the same, and NOT_FOUND for no candidate.
    hits: list[tuple[int, str] | None] = [(T, payload), None]
    rows = pit.as_of_cells(hits, [T + as_of_offset, T], decoder, 3_600 * MICROS)
    assert [repr(c) for c in rows[0]] == [repr(c) for c in want]
    assert rows[1] == pit.missing_cells(len(FIELDS))


def test_a_present_row_is_its_cells() -> None:
    row = PresentRow([1.5, None, "x"], T)
    cells = [
        Cell(1.5, Status.PRESENT, T), Cell(None, Status.NULL_VALUE, T), Cell("x", Status.PRESENT, T)
    ]  # fmt: skip
    assert row == cells and list(row) == cells and cells == row
    assert len(row) == 3 and row[1] == cells[1] and row[-1] == cells[-1] and row[1:] == cells[1:]
    assert row != cells[:2] and row != [Cell(1.5, Status.PRESENT, T + 1), *cells[1:]]
    assert row != 3 and row == PresentRow([1.5, None, "x"], T)


def test_what_orjson_refuses_is_read_by_json() -> None:
    # Not written by the store (strict JSON), but a row is read whatever it holds.
    assert str(codec._loads('{"d": NaN, "e": -Infinity}')) == str({"d": math.nan, "e": -math.inf})


def test_missing_cells_are_what_pit_cells_says_for_no_candidate() -> None:
    assert pit.missing_cells(3) == pit.cells(None, ["a", "b", "c"], T, 0)


# --- entity keys --------------------------------------------------------------------------


def test_an_int64_key_encodes_as_the_json_encoder_does() -> None:
    for value in (0, 1, -1, 2**63 - 1, -(2**63), 10**30):
        assert codec.encode_int_key(value) == codec.encode_key([value])


def test_entity_strings_single_int_key_matches_the_general_path() -> None:
    keys = (JoinKey(name="id", dtype=DType.INT64),)
    assert validation.entity_strings(keys, [{"id": 5}, {"id": -3}], "k") == ["[5]", "[-3]"]
    # Anything unusual goes the general way, with its field violations.
    when = datetime(2026, 12, 8, tzinfo=UTC)  # a kind JSON cannot encode
    bad_keys: list[dict[str, Scalar]] = [{"id": True}, {"id": "5"}, {}, {"id": None}, {"id": when}]
    for bad in bad_keys:
        with pytest.raises(InvalidInput) as caught:
            validation.entity_strings(keys, [{"id": 1}, bad], "k")
        assert caught.value.violations[0].field == "k[1].join_keys.id"
    two = (JoinKey(name="id", dtype=DType.INT64), JoinKey(name="s", dtype=DType.STRING))
    assert validation.entity_strings(two, [{"id": 1, "s": "é"}], "k") == ['[1,"é"]']
    with pytest.raises(InvalidInput) as caught:
        validation.entity_strings(two, [{"id": 1, "s": when}], "k")
    assert [v.field for v in caught.value.violations] == ["k[0].join_keys.s"]


# --- read plans follow the definitions ----------------------------------------------------


def definitions(ttl: timedelta, dtype: DType, names: tuple[str, ...] = ("x",)) -> DefinitionSet:
    return DefinitionSet(
        entities=(Entity(name="user", join_keys=(JoinKey(name="id", dtype=DType.INT64),)),),
        feature_views=(
            FeatureView(
                name="stats",
                entities=("user",),
                ttl=ttl,
                features=tuple(Feature(name=n, dtype=dtype) for n in names),
            ),
        ),
    )


def store_at(base: Path) -> FeatureStore:
    return FeatureStore(
        SqliteDefinitionStore(base / "defs.db"),
        SqliteOfflineStore(base / "offline.db"),
        SqliteOnlineStore(base / "online.db"),
        clock=lambda: T + 2 * 3_600 * MICROS,
    )


async def read_x(store: FeatureStore) -> Cell:
    result = await store.read_online(OnlineQuery(["stats:x"], "", [{"id": 1}], []))
    return result.rows[0][0]


async def test_a_definition_change_drops_the_cached_read_plans(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    await store.start()
    admin = Actor("test", True)
    await store.apply(definitions(timedelta(days=1), DType.INT64), force=False, dry_run=False,
                      actor=admin)  # fmt: skip
    await store.write(WriteBatch("b1", "stats", ["x"], [WriteRow({"id": 1}, T, [3])]))
    assert await read_x(store) == Cell(3, Status.PRESENT, T)
    # A shorter TTL: the value written 2 h ago has expired.
    await store.apply(definitions(timedelta(hours=1), DType.INT64), force=False, dry_run=False,
                      actor=admin)  # fmt: skip
    assert await read_x(store) == Cell(None, Status.EXPIRED, T)
    # A forced dtype change: the stored int now reads as a double.
    await store.apply(definitions(timedelta(days=1), DType.DOUBLE), force=True, dry_run=False,
                      actor=admin)  # fmt: skip
    cell = await read_x(store)
    assert cell == Cell(3.0, Status.PRESENT, T) and type(cell.value) is float
    history = [
        chunk.rows
        async for chunk in store.read_historical(
            convert.historical_query(
                pb.GetHistoricalFeaturesRequest(
                    feature_refs=["stats:x"],
                    entity_rows=[
                        pb.EntityRow(
                            entity_key=common_pb2.EntityKey(
                                join_keys={"id": common_pb2.Value(int64_value=1)}
                            ),
                            event_time=convert.timestamp(T + 60 * MICROS),
                        )
                    ],
                )
            )
        )
    ]
    assert history == [[[Cell(3.0, Status.PRESENT, T)]]]
    await store.close()


async def test_definitions_applied_by_another_replica_reach_the_cached_plans(
    tmp_path: Path,
) -> None:
    a, b = store_at(tmp_path), store_at(tmp_path)
    await a.start()
    admin = Actor("test", True)
    await a.apply(definitions(timedelta(days=1), DType.INT64), force=False, dry_run=False,
                  actor=admin)  # fmt: skip
    await a.write(WriteBatch("b1", "stats", ["x"], [WriteRow({"id": 1}, T, [3])]))
    await b.start()
    assert await read_x(b) == Cell(3, Status.PRESENT, T)  # b has a plan cached now
    await a.apply(definitions(timedelta(hours=1), DType.INT64), force=False, dry_run=False,
                  actor=admin)  # fmt: skip
    await b.refresh_definitions()
    assert await read_x(b) == Cell(None, Status.EXPIRED, T)
    await a.close()
    await b.close()


async def test_read_plans_are_kept_up_to_a_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "MAX_PLANS", 3)
    store = store_at(tmp_path)
    await store.start()
    three = definitions(timedelta(days=1), DType.INT64, ("x", "y", "z"))
    await store.apply(three, force=False, dry_run=False, actor=Actor("test", True))
    await store.write(WriteBatch("b1", "stats", ["x"], [WriteRow({"id": 1}, T, [3])]))
    lists = [["x"], ["y"], ["x", "y"], ["y", "x"], ["z"]]  # each list of refs: a plan
    plans = [store.compile([f"stats:{n}" for n in names], "") for names in lists]
    assert len({id(p) for p in plans}) == 5
    assert len(store._compiled) == 3
    assert store.compile(["stats:z"], "") is plans[-1]  # the newest are kept
    assert store.compile(["stats:x"], "") is not plans[0]  # the oldest went first
    assert await read_x(store) == Cell(3, Status.PRESENT, T)
    await store.close()
