"""protojson against json_format, the oracle: random messages of every type we define."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.features.v1 import features_pb2
from mlbackend.gateway.v1 import gateway_pb2
from mlbackend.inference.v2 import grpc_predict_v2_pb2
from mlbackend.monitoring.v1 import monitoring_pb2
from mlbackend.registry.v1 import registry_pb2
from mlbackend.serving.v1 import serving_pb2
from mlbackend_runtime import protojson

MODULES = (common_pb2, features_pb2, gateway_pb2, grpc_predict_v2_pb2, monitoring_pb2,
           registry_pb2, serving_pb2)  # fmt: skip
TYPES = [
    getattr(module, name) for module in MODULES for name in module.DESCRIPTOR.message_types_by_name
]

DOUBLES = (0.0, -0.0, 1.0, -2.5, 0.1, 1e-300, 1.7976931348623157e308, 5e-324, 123456789.125,
           math.nan, math.inf, -math.inf)  # fmt: skip
FLOATS = (0.0, 0.9, -1.5, 3.4e38, 1e-45, 0.1, 16777217.0, math.nan, math.inf, -math.inf)
INT64S = (0, 1, -1, 2**53 + 1, 2**63 - 1, -(2**63))
STRINGS = ("", "fraud", "ünïcode ✓", 'quote " and \\ back', "line\nbreak", "\x00\x1f")


def _scalar(field: FieldDescriptor, rng: random.Random) -> Any:
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return rng.choice(DOUBLES)
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return rng.choice(FLOATS)
    if kind == FieldDescriptor.CPPTYPE_INT64:
        return rng.choice(INT64S)
    if kind == FieldDescriptor.CPPTYPE_UINT64:
        return rng.choice((0, 1, 2**64 - 1, 2**53 + 1))
    if kind == FieldDescriptor.CPPTYPE_INT32:
        return rng.choice((0, 7, -7, 2**31 - 1, -(2**31)))
    if kind == FieldDescriptor.CPPTYPE_UINT32:
        return rng.choice((0, 7, 2**32 - 1))
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return rng.choice((True, False))
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        if (
            not field.enum_type.is_closed
            and field.enum_type.full_name != "google.protobuf.NullValue"
        ):
            # An open enum keeps a number it has no name for; NullValue is JSON's null,
            # which has no room for one (json_format itself reads 99 back as 0).
            numbers.append(99)
        return rng.choice(numbers)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    return rng.choice(STRINGS)


def _fill(message: Message, rng: random.Random, depth: int) -> None:
    descriptor: Descriptor = message.DESCRIPTOR
    special = _fill_well_known(message, descriptor.full_name, rng)
    if special:
        return
    chosen_oneofs: set[str] = set()
    for field in descriptor.fields:
        if rng.random() < 0.35:
            continue
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof.name in chosen_oneofs:
                continue
            chosen_oneofs.add(oneof.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            _fill_map(getattr(message, field.name), entry, rng, depth)
        elif field.is_repeated:
            container = getattr(message, field.name)
            for _ in range(rng.randrange(4)):
                if field.message_type is not None:
                    if depth > 0:
                        _fill(container.add(), rng, depth - 1)
                else:
                    container.append(_scalar(field, rng))
        elif field.message_type is not None:
            if depth > 0:
                child = getattr(message, field.name)
                child.SetInParent()
                _fill(child, rng, depth - 1)
        else:
            setattr(message, field.name, _scalar(field, rng))


def _fill_map(container: Any, entry: Descriptor, rng: random.Random, depth: int) -> None:
    key_field = entry.fields_by_name["key"]
    value_field = entry.fields_by_name["value"]
    for _ in range(rng.randrange(4)):
        key = _scalar(key_field, rng)
        if value_field.message_type is not None:
            if depth > 0:
                _fill(container[key], rng, depth - 1)
        else:
            container[key] = _scalar(value_field, rng)


def _fill_well_known(message: Any, name: str, rng: random.Random) -> bool:
    if name == "google.protobuf.Timestamp":
        message.seconds = rng.randrange(0, 4_000_000_000)
        message.nanos = rng.choice((0, 1_000_000, 123_456_000, 999_999_999))
    elif name == "google.protobuf.Duration":
        message.seconds = rng.randrange(-100_000, 100_000)
        message.nanos = (
            0
            if message.seconds == 0
            else rng.choice((0, 500_000_000)) * (1 if message.seconds > 0 else -1)
        )
    elif name == "google.protobuf.FieldMask":
        message.paths.extend(rng.sample(["description", "tags", "owner_team", "a.b_c"], 2))
    elif name == "google.protobuf.Struct":
        message.update({"a": 1.5, "b": [True, None, "x"], "c": {"d": "e"}})
    elif name == "google.protobuf.Any":
        # What our Any fields carry: google.rpc details (an input's error in a batch).
        field = f"inputs[{rng.randrange(1000)}].request_features.amount"
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description="bad")
        message.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    else:
        return False
    return True


def _random_messages(seed: int, count: int) -> list[Message]:
    rng = random.Random(seed)
    messages = []
    for message_type in TYPES:
        for _ in range(count):
            message = message_type()
            _fill(message, rng, depth=3)
            messages.append(message)
    return messages


def test_every_type_is_planned() -> None:
    assert len(TYPES) > 100  # the walk found our messages, not an empty list


@pytest.mark.parametrize("seed", range(4))
def test_same_json_as_json_format(seed: int) -> None:
    messages = _random_messages(seed, count=6)
    nonempty = 0
    for message in messages:
        expected = json.loads(json_format.MessageToJson(message))
        assert orjson.loads(protojson.to_json(message)) == expected, type(message).__name__
        assert protojson.to_object(message) == expected
        nonempty += bool(expected)
    assert nonempty > len(messages) // 2


def test_reads_back_as_the_same_message() -> None:
    for message in _random_messages(seed=11, count=3):
        again = json_format.Parse(protojson.to_json(message), type(message)())
        assert again.SerializeToString(deterministic=True) == message.SerializeToString(
            deterministic=True
        ), type(message).__name__


def test_the_mappings_json_format_prints() -> None:
    value = common_pb2.Prediction(probabilities=[0.25, math.nan, -math.inf], confidence=0.0)
    value.label.int64_value = 2**62
    assert orjson.loads(protojson.to_json(value)) == {
        "label": {"int64Value": str(2**62)},
        "probabilities": [0.25, "NaN", "-Infinity"],
        "confidence": 0.0,  # explicit presence: printed although zero
    }
    null = common_pb2.Value()
    null.null_value = 0
    assert protojson.to_json(null) == b'{"nullValue":null}'
    tensor = grpc_predict_v2_pb2.InferTensorContents(fp32_contents=[0.9], bytes_contents=[b"\xff"])
    assert orjson.loads(protojson.to_json(tensor)) == {
        "fp32Contents": [0.9],
        "bytesContents": ["/w=="],
    }


def _made_here() -> Any:
    """A proto2 type with the shapes our protos lack: bool and int map keys, a closed enum."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="protojson_test.proto", package="pjt",
                                               syntax="proto2")  # fmt: skip
    proto.enum_type.add(name="Colour").value.add(name="RED", number=1)
    message = proto.message_type.add(name="Shapes")
    for name, key_type in (("ByBool", "TYPE_BOOL"), ("ByInt", "TYPE_INT32")):
        entry = message.nested_type.add(name=name + "Entry")
        entry.options.map_entry = True
        entry.field.add(
            name="key",
            number=1,
            label=1,
            type=getattr(descriptor_pb2.FieldDescriptorProto, key_type),
        )
        entry.field.add(
            name="value", number=2, label=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING
        )
    label, repeated = (
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    message.field.add(
        name="by_bool", number=1, label=repeated, type=11, type_name=".pjt.Shapes.ByBoolEntry"
    )
    message.field.add(
        name="by_int", number=2, label=repeated, type=11, type_name=".pjt.Shapes.ByIntEntry"
    )
    message.field.add(name="colour", number=3, label=label, type=14, type_name=".pjt.Colour")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pjt.Shapes"))


def test_bool_and_int_map_keys_and_a_closed_enum() -> None:
    shapes = _made_here()()
    shapes.by_bool[True] = "yes"
    shapes.by_bool[False] = "no"
    shapes.by_int[-3] = "minus three"
    shapes.colour = 1
    expected = json.loads(json_format.MessageToJson(shapes))
    assert orjson.loads(protojson.to_json(shapes)) == expected
    assert expected["byBool"] == {"true": "yes", "false": "no"}


# --- parse: the same message or the same error as json_format.Parse ------------------------

ODD_VALUES = (None, "x", "", "12", "-7", " 5", "1.5", "NaN", "Infinity", 12, -3, 2**70, 1.5, 1e308,
              math.inf, -math.inf, math.nan,
              True, False, [], [1, "a"], {}, {"unknown": 1}, "\ud800", "2026-12-07T10:00:00Z",
              "FEATURE_STATUS_PRESENT", "1s", "a,b")  # fmt: skip


def _outcome(parse: Any, text: str, message_type: Any) -> tuple[str, bytes | str]:
    try:
        return "ok", parse(text, message_type()).SerializeToString(deterministic=True)
    except json_format.ParseError as exc:
        return "error", str(exc)


def _mutations(document: Any, rng: random.Random) -> list[Any]:
    """Copies of ``document`` with one value somewhere replaced by an odd one, a key
    repeated under its other name or added, or a list in place of an object."""
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                paths.append([*path, key])
                walk(child, [*path, key])
        elif isinstance(node, list):
            for index, child in enumerate(node):
                paths.append([*path, index])
                walk(child, [*path, index])

    walk(document, [])
    out = []
    for path in rng.sample(paths, min(len(paths), 6)):
        copy = json.loads(json.dumps(document))
        parent = copy
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = rng.choice(ODD_VALUES)
        out.append(copy)
    if isinstance(document, dict) and document:
        renamed = dict(document)
        key = next(iter(document))
        snake = "".join("_" + ch.lower() if ch.isupper() else ch for ch in key)
        renamed[snake if snake != key else key + "X"] = document[key]
        out.append(renamed)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_parse_matches_json_format_on_what_it_prints_and_on_odd_documents(seed: int) -> None:
    rng = random.Random(seed)
    compared = 0
    for message in _random_messages(seed + 100, count=2):
        kind = type(message)
        printed = json_format.MessageToJson(message)
        snake = json_format.MessageToJson(message, preserving_proto_field_name=True)
        for text in (printed, snake):
            expected = _outcome(json_format.Parse, text, kind)
            assert expected[0] == "ok"
            assert _outcome(protojson.parse, text, kind) == expected, (kind.__name__, text)
            for document in _mutations(json.loads(text), rng):
                odd = json.dumps(document)
                assert _outcome(protojson.parse, odd, kind) == _outcome(
                    json_format.Parse, odd, kind
                ), (
                    kind.__name__,
                    odd,
                )
                compared += 1
    assert compared > 1000


def test_parse_refuses_what_json_format_refuses_with_its_words() -> None:
    two_kinds = (
        '{"input": {"entityKey": {"joinKeys": {"id": {"int64Value": "1", "stringValue": "a"}}}}}'
    )
    lone_surrogate_key = '{"input": {"requestFeatures": {"\\ud800": {"doubleValue": 1}}}}'
    for text in ('{"model": "a", "model": "b"}', '{"model": 5}', "[1]", "{", '{"nope": 1}',
                 two_kinds, lone_surrogate_key):  # fmt: skip
        with pytest.raises(json_format.ParseError) as ours:
            protojson.parse(text, gateway_pb2.PredictRequest())
        with pytest.raises(json_format.ParseError) as theirs:
            json_format.Parse(text, gateway_pb2.PredictRequest())
        assert str(ours.value) == str(theirs.value)


def test_the_usual_predict_request_is_parsed_without_json_format(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = json.dumps({
        "model": "fraud",
        "version": {"alias": "production"},
        "input": {
            "entityKey": {
                "joinKeys": {"user_id": {"stringValue": "u17"}, "n": {"int64Value": "42"}}
            },
            "requestFeatures": {
                "amount": {"doubleValue": 120.5},
                "count": {"int64Value": 3},
                "merchant_category": {"stringValue": "grocery"},
                "at": {"timestampValue": "2026-12-07T10:00:00.250Z"},
                "flag": {"boolValue": True},
            },
        },
        "includeFeatureValues": True,
    })  # fmt: skip
    expected = json_format.Parse(text, gateway_pb2.PredictRequest())
    monkeypatch.setattr(protojson.json_format, "Parse", None)  # any fallback would fail
    assert protojson.parse(text, gateway_pb2.PredictRequest()) == expected
