"""``mlbackend.common.v1`` values ↔ domain scalars."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC

from google.protobuf import struct_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend_gateway.core.model import DType, FeatureStatus, Scalar

DTYPES = {
    common_pb2.DATA_TYPE_INT64: DType.INT64,
    common_pb2.DATA_TYPE_DOUBLE: DType.DOUBLE,
    common_pb2.DATA_TYPE_STRING: DType.STRING,
    common_pb2.DATA_TYPE_BOOL: DType.BOOL,
    common_pb2.DATA_TYPE_TIMESTAMP: DType.TIMESTAMP,
}

STATUSES = {
    common_pb2.FEATURE_STATUS_PRESENT: FeatureStatus.PRESENT,
    common_pb2.FEATURE_STATUS_NOT_FOUND: FeatureStatus.NOT_FOUND,
    common_pb2.FEATURE_STATUS_EXPIRED: FeatureStatus.EXPIRED,
    common_pb2.FEATURE_STATUS_DEFAULTED: FeatureStatus.DEFAULTED,
    common_pb2.FEATURE_STATUS_NULL_VALUE: FeatureStatus.NULL_VALUE,
    common_pb2.FEATURE_STATUS_REQUEST_INPUT: FeatureStatus.REQUEST_INPUT,
    common_pb2.FEATURE_STATUS_COMPUTED: FeatureStatus.COMPUTED,
}
STATUS_CODES = {v: k for k, v in STATUSES.items()}


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


def to_key(key: Mapping[str, Scalar]) -> common_pb2.EntityKey:
    return common_pb2.EntityKey(join_keys={k: to_value(v) for k, v in key.items()})


def to_map(values: Mapping[str, Scalar]) -> common_pb2.FeatureMap:
    return common_pb2.FeatureMap(values={k: to_value(v) for k, v in values.items()})
