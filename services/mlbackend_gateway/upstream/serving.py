"""Serving as the gateway's scorer: one Predict per leg, on an explicit version number,
sent over StreamPredict while a stream is to be had (``streams``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial

import grpc

from mlbackend.common.v1 import common_pb2
from mlbackend.serving.v1 import serving_pb2
from mlbackend_clients.errors import decode_error
from mlbackend_clients.serving import ServingClient
from mlbackend_clients.streams import StreamedMethod, StreamLimits
from mlbackend_gateway.core.model import ModelOutput, OutputInfo, Scalar, Scored
from mlbackend_gateway.core.ports import RefusedValue, ScoringRefused
from mlbackend_gateway.upstream.coalesce import CoalesceLimits, Coalescer
from mlbackend_gateway.upstream.failures import transport_failure
from mlbackend_gateway.upstream.registry import output_info
from mlbackend_gateway.upstream.values import set_value, to_scalar
from mlbackend_runtime.errors import FailedPrecondition

DEPENDENCY = "serving"
Envelope = serving_pb2.StreamPredictRequest
StreamAnswer = serving_pb2.StreamPredictResponse
_MAX_OUTPUTS = 256
# Serving's field path of one value of a Predict request: vectors[i].<feature name>.
_VALUE = re.compile(r"^vectors\[(\d+)\]\.(.+)$")


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


def _rows(scored: Scored, start: int, stop: int) -> Scored:
    return Scored(scored.version, scored.output, scored.rows[start:stop])


class ServingScorer:
    """Concurrent predictions for one model version leave as one call (``coalesce``);
    serving's own batching then only sees calls from different gateways."""

    def __init__(
        self,
        client: ServingClient,
        timeout: float,
        coalesce: CoalesceLimits | None = None,
        counted: Callable[[int], None] | None = None,
        streams: StreamLimits | None = None,
    ) -> None:
        self._timeout = timeout
        self._predict: StreamedMethod[
            Envelope, StreamAnswer, serving_pb2.PredictRequest, serving_pb2.PredictResponse
        ] = StreamedMethod(
            client,
            "Predict",
            "StreamPredict",
            Envelope,
            StreamAnswer,
            ("request", "response"),
            streams or StreamLimits(most=0),
        )
        # The output spec is the same on every answer for one version: decode it once.
        self._outputs: dict[bytes, OutputInfo] = {}
        self.calls: Coalescer[Sequence[Scalar], Scored] = Coalescer(
            DEPENDENCY, coalesce or CoalesceLimits(), _rows, counted
        )

    async def score(self, model: str, version: int, vectors: Sequence[Sequence[Scalar]]) -> Scored:
        return await self.calls.call(
            (model, version), vectors, partial(self._score, model, version)
        )

    async def close(self) -> None:
        await self.calls.close()
        await self._predict.close()

    async def _score(self, model: str, version: int, vectors: Sequence[Sequence[Scalar]]) -> Scored:
        envelope = Envelope()
        request = envelope.request
        request.model = model
        request.version.version = version
        for vector in vectors:
            values = request.vectors.add().values
            for value in vector:
                set_value(values.add(), value)
        try:
            response = await self._predict.send(envelope, self._timeout)
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
                # a deployment mismatch, unless the caller sent the refused values (the
                # pipeline tells, from the refused values' origin).
                raise _refused(exc, model, version) from None
            raise
        return Scored(
            version=response.version or version,
            output=self._output_info(response.output),
            rows=tuple(_output(p) for p in response.predictions),
        )

    def _output_info(self, spec: common_pb2.OutputSpec) -> OutputInfo:
        key = spec.SerializeToString()
        info = self._outputs.get(key)
        if info is None:
            if len(self._outputs) >= _MAX_OUTPUTS:
                self._outputs.clear()
            info = self._outputs[key] = output_info(spec)
        return info


def _refused(error: grpc.aio.AioRpcError, model: str, version: int) -> FailedPrecondition:
    refused = []
    details = error.details()
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        for violation in decode_error(error).violations:
            match = _VALUE.match(violation.field)
            if match is not None:
                refused.append(
                    RefusedValue(int(match.group(1)), match.group(2), violation.description)
                )
        if refused:
            details = "; ".join(f"{r.feature}: {r.description}" for r in refused[:5])
    message = f"serving cannot score model {model!r} version {version}: {details}"
    return ScoringRefused(message, refused) if refused else FailedPrecondition(message)
