"""What the gateway asks the feature store for: request inputs only when there are some."""

from __future__ import annotations

from typing import Any

import pytest

from mlbackend.common.v1 import common_pb2
from mlbackend.features.v1 import features_pb2
from mlbackend_features.transport import threaded
from mlbackend_gateway.core.model import (
    ModelVersionInfo,
    OutputInfo,
    OutputKind,
    PredictionInput,
)
from mlbackend_gateway.upstream.coalesce import CoalesceLimits
from mlbackend_gateway.upstream.features import FeatureStoreReader

# The build itself is checked in CI by test_feature_wire.py.
parse = threaded._wire.parse_online_request if threaded._wire is not None else None
needs_wire = pytest.mark.skipif(parse is None, reason="mlbackend_features._wire is not built")

VERSION = ModelVersionInfo(
    model="fraud",
    version=3,
    signature=(),
    output=OutputInfo(OutputKind.CLASSIFIER, (0, 1)),
    feature_service="fraud_fs@2",
)


class Store:
    """Stands in for the client: keeps each request and answers one value per entity."""

    def __init__(self) -> None:
        self.requests: list[features_pb2.GetOnlineFeaturesRequest] = []
        self.stub = self

    def method(self, name: str) -> str:
        return f"/mlbackend.features.v1.FeatureStoreService/{name}"

    def call_options(self, method: str, timeout: float | None) -> tuple[float | None, None]:
        return timeout, None

    async def GetOnlineFeatures(
        self, request: features_pb2.GetOnlineFeaturesRequest, **_: Any
    ) -> features_pb2.GetOnlineFeaturesResponse:
        self.requests.append(request)
        response = features_pb2.GetOnlineFeaturesResponse(feature_service=request.feature_service)
        response.schema.add().name = "user_stats:avg_amount"
        for _key in request.entity_keys:
            cell = response.rows.add().values.add()
            cell.value.double_value = 25.0
            cell.status = common_pb2.FEATURE_STATUS_PRESENT
        return response


def _path(i: int) -> str:
    return f"inputs[{i}]"


def _reader(store: Store) -> FeatureStoreReader:
    return FeatureStoreReader(store, timeout=1.0, coalesce=CoalesceLimits(max_rows=1))  # type: ignore[arg-type]


@needs_wire
async def test_entity_keys_alone_when_no_input_has_request_features() -> None:
    store = Store()
    table = await _reader(store).read(
        VERSION, [PredictionInput({"user_id": "u1"}), PredictionInput({"user_id": "u2"})], _path
    )
    assert [cell.value for row in table.rows for cell in row] == [25.0, 25.0]
    (request,) = store.requests
    assert request.feature_service == "fraud_fs@2" and not request.request_inputs
    # The shape the feature store reads in C, not through protobuf.
    assert parse is not None and parse(request.SerializeToString()) is not None


@needs_wire
async def test_one_entry_per_input_as_soon_as_one_has_request_features() -> None:
    store = Store()
    await _reader(store).read(
        VERSION,
        [PredictionInput({"user_id": "u1"}, {"amount": 80.0}), PredictionInput({"user_id": "u2"})],
        _path,
    )
    (request,) = store.requests
    assert [dict(entry.values) for entry in request.request_inputs] == [
        {"amount": common_pb2.Value(double_value=80.0)},
        {},
    ]
    assert parse is not None and parse(request.SerializeToString()) is None
