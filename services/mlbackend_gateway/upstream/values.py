"""``mlbackend.common.v1`` values ↔ domain scalars."""

from __future__ import annotations

from collections.abc import Mapping

from mlbackend.common.v1 import common_pb2
from mlbackend_clients.values import to_scalar, to_value
from mlbackend_gateway.core.model import DType, FeatureStatus, Scalar

__all__ = ["DTYPES", "STATUSES", "STATUS_CODES", "to_key", "to_map", "to_scalar", "to_value"]

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


def to_key(key: Mapping[str, Scalar]) -> common_pb2.EntityKey:
    return common_pb2.EntityKey(join_keys={k: to_value(v) for k, v in key.items()})


def to_map(values: Mapping[str, Scalar]) -> common_pb2.FeatureMap:
    return common_pb2.FeatureMap(values={k: to_value(v) for k, v in values.items()})
