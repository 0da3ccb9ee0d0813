"""The usual online read takes a lane of its own, and it must answer exactly as the
general path does.

- ``_wire.parse_online_request`` (C) reads the request's bytes: where it answers, the
  answer is what protobuf parses from the same bytes; everything else is None, never
  an exception, for well-formed and malformed bytes alike.
- ``FeatureStore.read_column_now`` answers what ``read_online_now`` answers for the
  same entities, and None (the general path then reports) where the column is not
  simply the plan's one join key.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mutations import accepted_as_the_oracle_reads

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as pb
from mlbackend_features.core.model import (
    MICROS,
    Actor,
    ColumnQuery,
    DefinitionSet,
    DType,
    Entity,
    Feature,
    FeatureService,
    FeatureView,
    JoinKey,
    Log1p,
    OnlineQuery,
    RequestInput,
    WriteBatch,
    WriteRow,
)
from mlbackend_features.core.service import FeatureStore
from mlbackend_features.stores.definitions import SqliteDefinitionStore
from mlbackend_features.stores.offline_sqlite import SqliteOfflineStore
from mlbackend_features.stores.online_sqlite import SqliteOnlineStore
from mlbackend_features.transport import convert, threaded

T = 1_767_225_600 * MICROS  # 2026-01-01

parse = threaded._wire.parse_online_request if threaded._wire is not None else None
needs_wire = pytest.mark.skipif(parse is None, reason="mlbackend_features._wire is not built")


def entity(value: object, name: str = "user_id") -> c.EntityKey:
    v = c.Value(int64_value=value) if type(value) is int else c.Value(string_value=str(value))
    return c.EntityKey(join_keys={name: v})


def request(keys: list[object], refs: tuple[str, ...] = ("v:x",), service: str = "") -> bytes:
    message = pb.GetOnlineFeaturesRequest(
        feature_refs=refs, feature_service=service, entity_keys=[entity(k) for k in keys]
    )
    return message.SerializeToString()


def by_protobuf(data: bytes) -> tuple[list[str], str, str, list[object]] | None:
    """What the general path reads from ``data``, in the parser's terms (None where the
    request is not of the usual shape or not a message at all)."""
    try:
        message = pb.GetOnlineFeaturesRequest.FromString(data)
    except Exception:  # any refusal: the parser must refuse too
        return None
    query = convert.online_query(message)
    names = {name for key in query.entity_keys for name in key}
    kinds = {type(v) for key in query.entity_keys for v in key.values()}
    if (
        query.request_inputs
        or not query.entity_keys
        or len(names) != 1
        or any(len(key) != 1 for key in query.entity_keys)
        or kinds not in ({int}, {str})
        or "" in names
    ):
        return None
    values = [next(iter(key.values())) for key in query.entity_keys]
    return query.feature_refs, query.feature_service, names.pop(), values


USUAL = [
    request([1]),
    request([0, -1, 127, 128, 2**63 - 1, -(2**63), 5, 5]),  # duplicates are kept
    request(["u1", "", "é ✓ 𝄞", "x" * 300]),
    request([7], refs=("v:x", "v:y", "w:z")),
    request([7], refs=(), service="svc@3"),
    request([7], refs=("a:b",), service="svc"),  # both: the plan refuses, not the parser
]


@needs_wire
@pytest.mark.parametrize("data", USUAL)
def test_the_usual_requests_parse_as_protobuf_parses_them(data: bytes) -> None:
    assert parse is not None
    want = by_protobuf(data)
    got = parse(data)
    assert want is not None and got == want
    # Where the column read steps aside, the general path gets the query protobuf gives.
    general = convert.online_query(pb.GetOnlineFeaturesRequest.FromString(data))
    assert ColumnQuery(*got).as_online_query() == general


def tag(field: int, wire: int) -> bytes:
    return bytes([field << 3 | wire])


def length(body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([len(body)]) + body


def key_bytes(entry: bytes) -> bytes:
    return tag(3, 2) + length(tag(1, 2) + length(entry))


INT_ENTRY = tag(1, 2) + length(b"user_id") + tag(2, 2) + length(tag(1, 0) + b"\x05")


@needs_wire
def test_fields_in_any_order_parse_as_protobuf_parses_them() -> None:
    assert parse is not None
    value_first = tag(2, 2) + length(tag(1, 0) + b"\x07") + tag(1, 2) + length(b"user_id")
    for data in [
        key_bytes(INT_ENTRY) + tag(1, 2) + length(b"v:x") + key_bytes(value_first),
        tag(2, 2) + length(b"svc") + key_bytes(INT_ENTRY) + tag(1, 2) + length(b"v:x"),
        key_bytes(tag(1, 2) + length(b"user_id") + tag(2, 2) + length(tag(1, 0) + b"\x85\x00")),
    ]:
        want = by_protobuf(data)
        assert want is not None and parse(data) == want


UNUSUAL = {
    "no entity keys": pb.GetOnlineFeaturesRequest(feature_refs=["v:x"]).SerializeToString(),
    "request inputs": pb.GetOnlineFeaturesRequest(
        feature_refs=["v:x"],
        entity_keys=[entity(1)],
        request_inputs=[c.FeatureMap(values={"amount": c.Value(double_value=1.0)})],
    ).SerializeToString(),
    "a composite key": pb.GetOnlineFeaturesRequest(
        entity_keys=[
            c.EntityKey(join_keys={"a": c.Value(int64_value=1), "b": c.Value(int64_value=2)})
        ]
    ).SerializeToString(),
    "two key names": pb.GetOnlineFeaturesRequest(
        entity_keys=[entity(1, "a"), entity(2, "b")]
    ).SerializeToString(),
    "ints and strings": request([1, "1"]),
    "a double key": pb.GetOnlineFeaturesRequest(
        entity_keys=[c.EntityKey(join_keys={"a": c.Value(double_value=1.0)})]
    ).SerializeToString(),
    "a bool key": pb.GetOnlineFeaturesRequest(
        entity_keys=[c.EntityKey(join_keys={"a": c.Value(bool_value=True)})]
    ).SerializeToString(),
    "a null key": pb.GetOnlineFeaturesRequest(
        entity_keys=[c.EntityKey(join_keys={"a": c.Value()})]
    ).SerializeToString(),
    "an empty key name": pb.GetOnlineFeaturesRequest(
        entity_keys=[c.EntityKey(join_keys={"": c.Value(int64_value=1)})]
    ).SerializeToString(),
    "an unknown field": request([1]) + tag(9, 0) + b"\x01",
    "feature_service twice": request([1], service="a") + tag(2, 2) + length(b"b"),
    "an int key as a varint of the wrong wire type": key_bytes(
        tag(1, 2) + length(b"id") + tag(2, 2) + length(tag(1, 5) + b"\x01\x00\x00\x00")
    ),
    "two members in one Value": key_bytes(
        tag(1, 2) + length(b"id") + tag(2, 2) + length(tag(1, 0) + b"\x01" + tag(3, 2) + b"\x00")
    ),
    "invalid UTF-8 in a ref": tag(1, 2) + length(b"\xff") + key_bytes(INT_ENTRY),
    "invalid UTF-8 in a string key": key_bytes(
        tag(1, 2) + length(b"id") + tag(2, 2) + length(tag(3, 2) + length(b"\xc3"))
    ),
    "an eleven-byte varint": key_bytes(
        tag(1, 2) + length(b"id") + tag(2, 2) + length(tag(1, 0) + b"\xff" * 10 + b"\x01")
    ),
    "a length past the end": tag(1, 2) + b"\x05ab",
    "field number zero": b"\x02\x00" + key_bytes(INT_ENTRY),
    "empty": b"",
}


@needs_wire
@pytest.mark.parametrize("name", list(UNUSUAL))
def test_anything_unusual_is_left_to_protobuf(name: str) -> None:
    assert parse is not None
    assert parse(UNUSUAL[name]) is None


@needs_wire
def test_mangled_requests_are_parsed_as_protobuf_would_or_left_alone() -> None:
    """Truncated, bit-flipped and spliced bytes: whatever the parser accepts, protobuf
    parses to the same usual request (bounded: 6,000 variants, well under a second)."""
    assert parse is not None
    seeds = [*USUAL, request([3, 300, -3]), request(["a", "bb"], service="s@1")]
    accepted = accepted_as_the_oracle_reads(parse, by_protobuf, seeds)
    assert accepted > 100  # the mutations left many requests valid: the oracle was used


# --- the column read ---------------------------------------------------------------------


def defs() -> DefinitionSet:
    user = Entity(name="user", join_keys=(JoinKey(name="user_id", dtype=DType.INT64),))
    acct = Entity(name="acct", join_keys=(JoinKey(name="acct_id", dtype=DType.STRING),))
    pair = Entity(
        name="pair",
        join_keys=(
            JoinKey(name="user_id", dtype=DType.INT64),
            JoinKey(name="acct_id", dtype=DType.STRING),
        ),
    )
    hour = timedelta(hours=1)

    def view(name: str, of: str, *features: Feature, online: bool = True) -> FeatureView:
        return FeatureView(name=name, entities=(of,), ttl=hour, features=features, online=online)

    return DefinitionSet(
        entities=(user, acct, pair),
        feature_views=(
            view(
                "v",
                "user",
                Feature(name="x", dtype=DType.DOUBLE),
                Feature(name="y", dtype=DType.INT64),
            ),
            view("w", "user", Feature(name="z", dtype=DType.STRING)),
            view("a", "acct", Feature(name="b", dtype=DType.DOUBLE)),
            view("p", "pair", Feature(name="q", dtype=DType.DOUBLE)),
            view("off", "user", Feature(name="o", dtype=DType.DOUBLE), online=False),
        ),
        feature_services=(
            FeatureService(name="plain", feature_refs=("v:x", "w:z")),
            FeatureService(
                name="logged", feature_refs=("v:x",), transforms=(Log1p(output="lx", input="v:x"),)
            ),
            FeatureService(
                name="asks",
                feature_refs=("v:x",),
                request_inputs=(RequestInput(name="amount", dtype=DType.DOUBLE),),
            ),
        ),
    )


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = FeatureStore(
        SqliteDefinitionStore(tmp_path / "defs.db"),
        SqliteOfflineStore(tmp_path / "offline.db"),
        SqliteOnlineStore(tmp_path / "online.db"),
        clock=lambda: T,
    )
    await store.start()
    await store.apply(defs(), force=False, dry_run=False, actor=Actor("test", True))
    hour = 3_600 * MICROS
    await store.write(WriteBatch("b1", "v", ["x", "y"], [
        WriteRow({"user_id": 1}, T - 60, [1.5, 3]),
        WriteRow({"user_id": 2}, T - hour - 1, [2.5, 4]),  # expired at T
        WriteRow({"user_id": -(2**63)}, T, [None, 5]),
    ]))  # fmt: skip
    await store.write(WriteBatch("b2", "w", ["z"], [WriteRow({"user_id": 1}, T - 5, ["é"])]))
    await store.write(WriteBatch("b3", "a", ["b"], [WriteRow({"acct_id": "k"}, T - 5, [9.0])]))
    yield store
    await store.close()


INTS = [1, 2, 1, 404, -(2**63), 2]


@pytest.mark.parametrize(
    ("refs", "service", "key", "values"),
    [
        (["v:x", "v:y"], "", "user_id", INTS),  # direct: the view's cells as they are
        (["v:y"], "", "user_id", INTS),
        (["v:x", "w:z"], "", "user_id", INTS),  # two views
        ([], "plain", "user_id", INTS),
        ([], "logged@1", "user_id", INTS),  # a transform
        (["a:b"], "", "acct_id", ["k", "nope", "k", ""]),
    ],
)
async def test_a_column_read_answers_what_the_general_read_answers(
    store: FeatureStore, refs: list[str], service: str, key: str, values: list[Any]
) -> None:
    column = store.read_column_now(ColumnQuery(refs, service, key, values))
    general = store.read_online_now(OnlineQuery(refs, service, [{key: v} for v in values], []))
    assert column is not None and general is not None
    assert column == general
    assert [list(r) for r in column.rows] == [list(r) for r in general.rows]
    wire = convert.online_result_wire
    assert wire(column) == wire(general)


@pytest.mark.parametrize(
    ("refs", "service", "key", "values"),
    [
        (["v:x"], "", "acct_id", [1]),  # not the view's join key
        (["v:x"], "", "user_id", ["1"]),  # a string for an int64 key
        (["a:b"], "", "acct_id", [1]),  # an int for a string key
        (["a:b"], "", "acct_id", ["x" * 257]),  # maybe over the key size limit
        (["p:q"], "", "user_id", [1]),  # a composite key
        (["off:o"], "", "user_id", [1]),  # not kept online
        ([], "asks", "user_id", [1]),  # request inputs required
        (["v:nope"], "", "user_id", [1]),  # unknown feature: the general path says so
        (["v:x"], "", "user_id", list(range(10_001))),  # too many
    ],
)
async def test_a_column_read_leaves_the_rest_to_the_general_read(
    store: FeatureStore, refs: list[str], service: str, key: str, values: list[Any]
) -> None:
    query = ColumnQuery(refs, service, key, values)
    try:
        assert store.read_column_now(query) is None
    except Exception as exc:
        # A plan that cannot compile refuses the same way on both paths.
        general = OnlineQuery(refs, service, [{key: v} for v in values], [])
        with pytest.raises(type(exc)) as raised:
            store.read_online_now(general)
        assert str(raised.value) == str(exc)
