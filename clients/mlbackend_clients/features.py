"""Typed client of the feature store (`mlbackend.features.v1.FeatureStoreService`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlbackend.features.v1 import features_pb2, features_pb2_grpc
from mlbackend_clients.base import ServiceClient

if TYPE_CHECKING:
    import pyarrow as pa

FEATURE_SERVICE_KEY = b"mlbackend.feature_service"
"""Schema metadata of :meth:`FeatureStoreClient.historical_table`'s result: the feature
service read, as resolved by the store (``name@version``)."""


def arrow_stream(table: pa.Table) -> bytes:
    """``table`` as the bytes of an Arrow IPC stream (what ``entity_table`` takes)."""
    import pyarrow as pa  # here: importing the clients stays free of numpy

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data: bytes = sink.getvalue().to_pybytes()
    return data


class FeatureStoreClient(ServiceClient["features_pb2_grpc.FeatureStoreServiceAsyncStub"]):
    SERVICE = features_pb2.DESCRIPTOR.services_by_name["FeatureStoreService"]
    STUB = features_pb2_grpc.FeatureStoreServiceStub

    async def historical_table(
        self,
        entities: pa.Table,
        *,
        feature_refs: Sequence[str] = (),
        feature_service: str = "",
        chunk_size: int = 0,
        timeout: float | None = 600.0,
    ) -> pa.Table:
        """Point-in-time values for each row of ``entities`` (join-key columns,
        ``event_timestamp`` and the feature service's request inputs, by name), as one
        table in row order: per output NAME the columns NAME, ``NAME__status`` and
        ``NAME__event_time`` (layout in features.proto). A feature service's resolved
        ``name@version`` is in the schema metadata under :data:`FEATURE_SERVICE_KEY`."""
        import pyarrow as pa  # here: importing the clients stays free of numpy

        request = features_pb2.GetHistoricalFeaturesRequest(
            feature_refs=feature_refs,
            feature_service=feature_service,
            entity_table=arrow_stream(entities),
            chunk_size=chunk_size,
            result_format=features_pb2.RESULT_FORMAT_ARROW,
        )
        batches: list[pa.RecordBatch] = []
        resolved = ""
        timeout, metadata = self.call_options(self.method("GetHistoricalFeatures"), timeout)
        stream = self.stub.GetHistoricalFeatures(request, timeout=timeout, metadata=metadata)
        async for chunk in stream:
            resolved = resolved or chunk.feature_service
            with pa.ipc.open_stream(chunk.arrow) as reader:
                batches.extend(reader)
        table = pa.Table.from_batches(batches)
        if resolved:
            table = table.replace_schema_metadata({FEATURE_SERVICE_KEY: resolved.encode()})
        return table
