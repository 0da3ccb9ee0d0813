"""``mlbackend.common.v1.Value`` ↔ plain Python scalars, for requests and responses.

A timestamp becomes an aware ``datetime`` in UTC (microsecond precision), null becomes
``None``; a bool stays a bool (it is checked before int).
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import struct_pb2, timestamp_pb2

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
    if scalar is None:
        return common_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(scalar, bool):
        return common_pb2.Value(bool_value=scalar)
    if isinstance(scalar, int):
        return common_pb2.Value(int64_value=scalar)
    if isinstance(scalar, float):
        return common_pb2.Value(double_value=scalar)
    if isinstance(scalar, str):
        return common_pb2.Value(string_value=scalar)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(scalar)
    return common_pb2.Value(timestamp_value=stamp)
