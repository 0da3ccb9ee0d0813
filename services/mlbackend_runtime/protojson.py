"""Protobuf messages to and from ProtoJSON, several times faster than ``json_format``.

``to_json(message)`` is ``json_format.MessageToJson(message)`` parsed back: the same
members, names, and values. The bytes differ only in whitespace, since the output is
compact. The speed comes from two things:
- each field's converter is chosen once per message type (``json_format`` decides again
  at every value);
- the result is serialized by orjson.

What it covers, the proto3 JSON mapping as ``json_format`` prints it by default:
- names: ``json_name``;
- presence: the fields ``ListFields`` reports;
- 64-bit integers: strings;
- doubles: non-finite as ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``;
- floats: the shortest text that reads back as the same float32;
- bytes: standard base64;
- enums: names, with an unknown number of an open enum as the number;
- ``NullValue``: ``null``;
- maps: objects with keys as text;
- wrappers: their value;
- Timestamp, Duration and FieldMask: their JSON strings.

The other well-known types (Any, Struct, Value, ListValue) and extensions are handed to
``json_format``, so nothing is printed differently, only slower.

``parse(text, message)`` is ``json_format.Parse(text, message)`` for a fresh message:
the same message, or the same error. It fills the usual shapes itself, from one plan
per message type: objects, strings, booleans, finite numbers, integers as numbers or
digit strings, enum names, maps with string keys, lists, and Timestamp, Duration and
FieldMask strings. Any other shape goes to ``json_format``, which then gives its own
result or error. That covers nulls, bytes, float32, wrappers, Struct and Any, one field
named twice, a repeated key, and numbers written any other way.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

Convert = Callable[[Any], Any]

_INF = math.inf
_STRING_FORM = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
}
_BY_JSON_FORMAT = {"google.protobuf.Any", "google.protobuf.Struct", "google.protobuf.Value",
                   "google.protobuf.ListValue"}  # fmt: skip
_WRAPPERS = {
    f"google.protobuf.{kind}Value"
    for kind in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}

_Plan = dict[FieldDescriptor, tuple[str, Convert | None]]  # None: the value is its JSON
_PLANS: dict[Any, _Plan] = {}  # by message Descriptor


def to_json(message: Message) -> bytes:
    """The message's ProtoJSON text, compact, UTF-8."""
    return orjson.dumps(to_object(message))


def to_object(message: Message) -> Any:
    """The message as JSON-ready Python values (what ``json_format.MessageToDict`` gives)."""
    return _message_converter(message.DESCRIPTOR)(message)


def _message_converter(descriptor: Any) -> Convert:
    name = descriptor.full_name
    if name in _STRING_FORM:
        return _string_form
    if name in _BY_JSON_FORMAT:
        return json_format.MessageToDict
    if name in _WRAPPERS:
        inner = _field_converter(descriptor.fields_by_name["value"])
        if inner is None:
            return lambda message: message.value
        return lambda message: inner(message.value)
    return _regular


def _string_form(message: Any) -> Any:
    return message.ToJsonString()


def _regular(message: Message) -> dict[str, Any]:
    plan = _PLANS.get(message.DESCRIPTOR)
    if plan is None:
        plan = _PLANS[message.DESCRIPTOR] = _plan(message.DESCRIPTOR)
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        step = plan.get(field)
        if step is None:  # an extension: json_format's business
            return json_format.MessageToDict(message)
        name, convert = step
        out[name] = value if convert is None else convert(value)
    return out


def _plan(descriptor: Any) -> _Plan:
    plan: _Plan = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = _map_key(field.message_type.fields_by_name["key"])
            value = _field_converter(field.message_type.fields_by_name["value"])
            plan[field] = (field.json_name, _mapping(key, value))
        elif field.is_repeated:
            plan[field] = (field.json_name, _sequence(_field_converter(field)))
        else:
            plan[field] = (field.json_name, _field_converter(field))
    return plan


def _mapping(key: Convert, value: Convert | None) -> Convert:
    if value is None:
        return lambda entries: {key(k): v for k, v in entries.items()}
    return lambda entries: {key(k): value(v) for k, v in entries.items()}


def _sequence(item: Convert | None) -> Convert:
    if item is None:
        return list
    return lambda values: [item(v) for v in values]


def _map_key(field: FieldDescriptor) -> Convert:
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return lambda key: "true" if key else "false"
    return str


def _field_converter(field: FieldDescriptor) -> Convert | None:
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_MESSAGE:
        return _message_converter(field.message_type)
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        return _enum(field)
    if kind in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
        return str
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return _double
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return _float
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return bool
    return None  # strings and 32-bit integers are JSON as they are


def _enum(field: FieldDescriptor) -> Convert:
    enum: Any = field.enum_type
    if enum.full_name == "google.protobuf.NullValue":
        return lambda _value: None
    return _EnumNames(field).__getitem__


class _EnumNames(dict[int, Any]):
    """Number → name of one enum field; a number without a name stays a number (open enum)."""

    def __init__(self, field: FieldDescriptor) -> None:
        enum: Any = field.enum_type
        super().__init__((number, value.name) for number, value in enum.values_by_number.items())
        self._closed: bool = enum.is_closed
        self._where = f"{field.full_name}: {{}} is not a value of the closed enum {enum.full_name}"

    def __missing__(self, number: int) -> Any:
        if self._closed:
            raise json_format.SerializeToJsonError(self._where.format(number))
        return number


def _double(value: float) -> Any:
    if -_INF < value < _INF:
        return value
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _float(value: float) -> Any:
    if not -_INF < value < _INF:
        return _double(value)
    as_float32 = struct.unpack("<f", struct.pack("<f", value))[0]
    for digits in range(6, 10):  # the fewest significant digits that read back as the float32
        shortest = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", shortest))[0] == as_float32:
            return shortest
    return value


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


# --- parsing ---------------------------------------------------------------------------

M = TypeVar("M", bound=Message)
_MAX_DEPTH = 32  # deeper documents go to json_format (which allows 100)
_DIGITS = re.compile(r"-?[0-9]+")


class _Unusual(Exception):
    """A shape this parser leaves to ``json_format``."""


def parse(text: str, message: M) -> M:
    """``json_format.Parse(text, message)`` into a fresh ``message``: the same result or
    the same ``ParseError``."""
    try:
        _fill_value(message, json.loads(text, object_pairs_hook=_unique_keys), 0)
    except Exception:  # whatever it was, json_format decides (and words the error)
        message.Clear()
        json_format.Parse(text, message)
    return message


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _Unusual  # json_format refuses a repeated key
    return document


Read = Callable[[Message, FieldDescriptor, Any, int], None]
_READ_PLANS: dict[Any, dict[str, tuple[FieldDescriptor, Read]]] = {}  # by message Descriptor


def _fill(message: Message, document: dict[str, Any], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise _Unusual
    descriptor = message.DESCRIPTOR
    plan = _READ_PLANS.get(descriptor)
    if plan is None:
        plan = _READ_PLANS[descriptor] = _read_plan(descriptor)
    seen: set[Any] = set()  # fields and oneofs: one of each, as json_format wants
    for name, value in document.items():
        step = plan.get(name)
        if step is None or value is None:
            raise _Unusual
        field, read = step
        oneof = field.containing_oneof
        if field in seen or (oneof is not None and oneof in seen):
            raise _Unusual
        seen.add(field)
        if oneof is not None:
            seen.add(oneof)
        read(message, field, value, depth)


def _read_plan(descriptor: Any) -> dict[str, tuple[FieldDescriptor, Read]]:
    plan: dict[str, tuple[FieldDescriptor, Read]] = {}
    fields = list(descriptor.fields)
    for names in ([f.name for f in fields], [f.json_name for f in fields]):  # json names win
        for name, field in zip(names, fields, strict=True):
            plan[name] = (field, _reader(field))
    return plan


def _reader(field: FieldDescriptor) -> Read:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        if key_field.cpp_type != FieldDescriptor.CPPTYPE_STRING:
            return _refuse
        if value_field.message_type is not None:
            return _read_message_map
        return _scalar_map(_scalar_reader(value_field))
    if field.is_repeated:
        if field.message_type is not None:
            return _read_messages
        return _scalars(_scalar_reader(field))
    if field.message_type is not None:
        return _read_message
    return _scalar(_scalar_reader(field))


def _refuse(message: Message, field: FieldDescriptor, value: Any, depth: int) -> None:
    raise _Unusual


def _read_message(message: Message, field: FieldDescriptor, value: Any, depth: int) -> None:
    child = getattr(message, field.name)
    child.SetInParent()
    _fill_value(child, value, depth + 1)


def _read_messages(message: Message, field: FieldDescriptor, value: Any, depth: int) -> None:
    if type(value) is not list:
        raise _Unusual
    container = getattr(message, field.name)
    for item in value:
        _fill_value(container.add(), item, depth + 1)


def _read_message_map(message: Message, field: FieldDescriptor, value: Any, depth: int) -> None:
    if type(value) is not dict:
        raise _Unusual
    entries = getattr(message, field.name)
    for key, item in value.items():
        _fill_value(entries[key], item, depth + 1)


def _fill_value(message: Message, value: Any, depth: int) -> None:
    name = message.DESCRIPTOR.full_name
    if name in _STRING_FORM:
        if type(value) is not str:
            raise _Unusual
        message.FromJsonString(value)  # type: ignore[attr-defined]
    elif type(value) is not dict or name in _BY_JSON_FORMAT or name in _WRAPPERS:
        raise _Unusual
    else:
        _fill(message, value, depth)


def _scalar(convert: Convert) -> Read:
    def read(message: Message, field: FieldDescriptor, value: Any, depth: int) -> None:
        setattr(message, field.name, convert(value))

    return read


def _scalars(convert: Convert) -> Read:
    def read(message: Message, field: FieldDescriptor, value: Any, depth: int) -> None:
        if type(value) is not list:
            raise _Unusual
        getattr(message, field.name).extend([convert(item) for item in value])

    return read


def _scalar_map(convert: Convert) -> Read:
    def read(message: Message, field: FieldDescriptor, value: Any, depth: int) -> None:
        if type(value) is not dict:
            raise _Unusual
        entries = getattr(message, field.name)
        for key, item in value.items():
            entries[key] = convert(item)

    return read


def _scalar_reader(field: FieldDescriptor) -> Convert:
    kind = field.cpp_type
    if kind in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
                FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64):  # fmt: skip
        return _read_int
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return _read_double
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return _read_bool
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        enum: Any = field.enum_type
        return _enum_reader({name: value.number for name, value in enum.values_by_name.items()})
    if kind == FieldDescriptor.CPPTYPE_STRING and field.type != FieldDescriptor.TYPE_BYTES:
        return _read_string
    return _read_unusual  # float32 and bytes


def _read_int(value: Any) -> int:
    if type(value) is int or (type(value) is str and _DIGITS.fullmatch(value)):
        return int(value)
    raise _Unusual


def _read_double(value: Any) -> float:
    if (type(value) is float and -_INF < value < _INF) or type(value) is int:
        return float(value)
    raise _Unusual


def _read_bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise _Unusual


def _read_string(value: Any) -> str:
    if type(value) is str:
        return value
    raise _Unusual


def _read_unusual(value: Any) -> Any:
    raise _Unusual


def _enum_reader(numbers: dict[str, int]) -> Convert:
    def read(value: Any) -> int:
        number = numbers.get(value) if type(value) is str else None
        if number is None:
            raise _Unusual
        return number

    return read
