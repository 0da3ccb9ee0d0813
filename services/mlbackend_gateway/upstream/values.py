"""``mlbackend.common.v1`` values ↔ domain scalars."""

from __future__ import annotations

from collections.abc import Mapping

from mlbackend.common.v1 import common_pb2
from mlbackend_clients.values import set_value, to_scalar, to_value
from mlbackend_gateway.core.model import DType, FeatureStatus, Scalar

__all__ = ["DTYPES", "STATUSES", "STATUS_CODES", "set_key", "set_map", "set_value", "to_scalar",
           "to_value"]  # fmt: skip

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


def set_key(target: common_pb2.EntityKey, key: Mapping[str, Scalar]) -> None:
    join_keys = target.join_keys
    for name, value in key.items():
        set_value(join_keys[name], value)


def set_map(target: common_pb2.FeatureMap, values: Mapping[str, Scalar]) -> None:
    entries = target.values
    for name, value in values.items():
        set_value(entries[name], value)
