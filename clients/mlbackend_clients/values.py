"""``mlbackend.common.v1.Value`` ↔ plain Python scalars, for requests and responses.

A timestamp becomes an aware ``datetime`` in UTC (microsecond precision), null becomes
``None``; a bool stays a bool (it is checked before int).
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import struct_pb2

from mlbackend.common.v1 import common_pb2

Scalar = int | float | str | bool | datetime | None


def to_scalar(value: common_pb2.Value) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=UTC)
    scalar: Scalar = getattr(value, kind)
    return scalar


def to_value(scalar: Scalar) -> common_pb2.Value:
    value = common_pb2.Value()
    set_value(value, scalar)
    return value


def set_value(target: common_pb2.Value, scalar: Scalar) -> None:
    """Write ``scalar`` into ``target`` in place: into a message field, a map entry or
    ``repeated.add()``, this is about 3x cheaper than building a Value and copying it."""
    if scalar is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(scalar, bool):
        target.bool_value = scalar
    elif isinstance(scalar, int):
        target.int64_value = scalar
    elif isinstance(scalar, float):
        target.double_value = scalar
    elif isinstance(scalar, str):
        target.string_value = scalar
    else:
        target.timestamp_value.FromDatetime(scalar)
