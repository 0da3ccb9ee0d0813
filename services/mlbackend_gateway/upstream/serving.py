"""Serving as the gateway's scorer: one Predict per leg, on an explicit version number."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from mlbackend.common.v1 import common_pb2
from mlbackend.serving.v1 import serving_pb2
from mlbackend_clients.serving import ServingClient
from mlbackend_gateway.core.model import ModelOutput, Scalar, Scored
from mlbackend_gateway.upstream.failures import transport_failure
from mlbackend_gateway.upstream.registry import output_info
from mlbackend_gateway.upstream.values import to_scalar, to_value
from mlbackend_runtime.errors import FailedPrecondition

DEPENDENCY = "serving"


def _output(prediction: common_pb2.Prediction) -> ModelOutput:
    return ModelOutput(
        label=to_scalar(prediction.label) if prediction.HasField("label") else None,
        value=prediction.value if prediction.HasField("value") else None,
        probabilities=tuple(prediction.probabilities),
        confidence=prediction.confidence if prediction.HasField("confidence") else None,
        decision_threshold=(
            prediction.decision_threshold if prediction.HasField("decision_threshold") else None
        ),
    )


class ServingScorer:
    def __init__(self, client: ServingClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def score(self, model: str, version: int, vectors: Sequence[Sequence[Scalar]]) -> Scored:
        request = serving_pb2.PredictRequest(
            model=model,
            version=common_pb2.VersionSelector(version=version),
            vectors=[
                common_pb2.FeatureVector(values=[to_value(v) for v in vector]) for vector in vectors
            ],
        )
        try:
            response = await self._client.stub.Predict(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            mapped = transport_failure(DEPENDENCY, exc)
            if mapped is not None:
                raise mapped from None
            if exc.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                # The version is registered but serving cannot run it with these inputs:
                # a deployment mismatch, not the caller's fault.
                raise FailedPrecondition(
                    f"serving cannot score model {model!r} version {version}: {exc.details()}"
                ) from None
            raise
        return Scored(
            version=response.version or version,
            output=output_info(response.output),
            rows=tuple(_output(p) for p in response.predictions),
        )
