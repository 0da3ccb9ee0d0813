"""The feature store as the gateway's feature reader: one GetOnlineFeatures per leg,
sent over StreamOnlineFeatures while a stream is to be had (``streams``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial

import grpc

from mlbackend.features.v1 import features_pb2
from mlbackend_clients.errors import decode_error
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.streams import StreamedMethod, StreamLimits
from mlbackend_gateway.core.model import (
    FeatureStatus,
    FeatureTable,
    FieldPath,
    ModelVersionInfo,
    PredictionInput,
    StoredValue,
)
from mlbackend_gateway.upstream.coalesce import CoalesceLimits, Coalescer
from mlbackend_gateway.upstream.failures import transport_failure
from mlbackend_gateway.upstream.values import STATUSES, set_key, set_map, to_scalar
from mlbackend_runtime.errors import FailedPrecondition, FieldViolation, InvalidInput

DEPENDENCY = "feature-store"

Envelope = features_pb2.StreamOnlineFeaturesRequest
StreamAnswer = features_pb2.StreamOnlineFeaturesResponse

# The store's field paths, rewritten to the gateway request's.
_REQUEST_INPUT = re.compile(r"^request_inputs\[(\d+)\]\.?(.*)$")
_ENTITY_KEY = re.compile(r"^entity_keys\[(\d+)\]\.?(.*)$")


class FeatureStoreReader:
    """Concurrent reads for one model version leave as one call (``coalesce``)."""

    def __init__(
        self,
        client: FeatureStoreClient,
        timeout: float,
        coalesce: CoalesceLimits | None = None,
        counted: Callable[[int], None] | None = None,
        streams: StreamLimits | None = None,
    ) -> None:
        self._timeout = timeout
        self._get: StreamedMethod[
            Envelope,
            StreamAnswer,
            features_pb2.GetOnlineFeaturesRequest,
            features_pb2.GetOnlineFeaturesResponse,
        ] = StreamedMethod(
            client,
            "GetOnlineFeatures",
            "StreamOnlineFeatures",
            Envelope,
            StreamAnswer,
            ("read", "read"),
            streams or StreamLimits(most=0),
        )
        self.calls: Coalescer[PredictionInput, FeatureTable] = Coalescer(
            DEPENDENCY, coalesce or CoalesceLimits(), _rows, counted
        )

    async def read(
        self, version: ModelVersionInfo, inputs: Sequence[PredictionInput], path: FieldPath
    ) -> FeatureTable:
        # A call shared with other callers that the store refuses is retried for each
        # caller alone (the coalescer), so a refusal's row numbers are this caller's.
        return await self.calls.call(
            (version.model, version.version), inputs, partial(self._read, version, path)
        )

    async def close(self) -> None:
        await self.calls.close()
        await self._get.close()

    async def _read(
        self, version: ModelVersionInfo, path: FieldPath, inputs: Sequence[PredictionInput]
    ) -> FeatureTable:
        envelope = Envelope()
        request = envelope.read
        for item in inputs:
            set_key(request.entity_keys.add(), item.entity_key)
        if version.feature_service:
            request.feature_service = version.feature_service
            # None at all when no input has any: the store reads the same, and a request
            # of entity keys alone is the one it parses in C (request inputs, even empty
            # ones, send it to protobuf; its CPU per read at concurrency 1 was ~555 µs
            # with them and ~530 without, alternated runs).
            if any(item.request_features for item in inputs):
                for item in inputs:
                    set_map(request.request_inputs.add(), item.request_features)
        else:
            request.feature_refs.extend(version.feature_refs)
        try:
            response = await self._get.send(envelope, self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise _fail(exc, version, path) from None
        columns = tuple(s.name for s in response.schema)
        rows = tuple(
            tuple(
                StoredValue(to_scalar(v.value), STATUSES.get(v.status, FeatureStatus.NOT_FOUND))
                for v in row.values
            )
            for row in response.rows
        )
        return FeatureTable(columns, rows, response.feature_service or version.feature_service)


def _rows(table: FeatureTable, start: int, stop: int) -> FeatureTable:
    return FeatureTable(table.columns, table.rows[start:stop], table.feature_service)


def _fail(error: grpc.aio.AioRpcError, version: ModelVersionInfo, path: FieldPath) -> Exception:
    mapped = transport_failure(DEPENDENCY, error)
    if mapped is not None:
        return mapped
    code = error.code()
    what = version.feature_service or ", ".join(version.feature_refs)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        decoded = decode_error(error)
        violations = [
            FieldViolation(_rewrite(v.field, path), v.description) for v in decoded.violations
        ]
        message = decoded.message
        found = decoded.total_violations  # the details may list only the first ones
        if violations:  # the store's message names its own fields: name the caller's
            first = violations[0]
            listed = f", the first {len(violations)} listed" if found > len(violations) else ""
            message = f"{found} invalid input(s){listed}; first: {first.field}: {first.description}"
        return InvalidInput(f"feature store refused the inputs: {message}", violations, found)
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
        return FailedPrecondition(
            f"model {version.model!r} version {version.version} reads {what!r}, which the "
            f"feature store cannot serve: {error.details()}"
        )
    return error


def _rewrite(field: str, path: FieldPath) -> str:
    for pattern, member in ((_REQUEST_INPUT, "request_features"), (_ENTITY_KEY, "entity_key")):
        match = pattern.match(field)
        if match:
            where = path(int(match.group(1)))
            rest = match.group(2)
            if member == "entity_key" and rest.startswith("join_keys"):
                rest = rest.removeprefix("join_keys").lstrip(".")
            return f"{where}.{member}" + (f".{rest}" if rest else "")
    return field
