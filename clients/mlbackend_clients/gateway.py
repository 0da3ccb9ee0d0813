"""Typed client of the inference gateway (`mlbackend.gateway.v1.InferenceGatewayService`)."""

from __future__ import annotations

from mlbackend.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from mlbackend_clients.base import ServiceClient
from mlbackend_clients.streams import StreamedMethod, StreamLimits

StreamedPredict = StreamedMethod[
    gateway_pb2.StreamPredictRequest,
    gateway_pb2.StreamPredictResponse,
    gateway_pb2.PredictRequest,
    gateway_pb2.PredictResponse,
]


class GatewayClient(ServiceClient["gateway_pb2_grpc.InferenceGatewayServiceAsyncStub"]):
    SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["InferenceGatewayService"]
    STUB = gateway_pb2_grpc.InferenceGatewayServiceStub

    def streamed_predict(self, limits: StreamLimits | None = None) -> StreamedPredict:
        """Predict for a caller that predicts all the time: each request is a message
        of a ``StreamPredict`` stream kept open (up to ``limits.most`` at once, renewed
        so that a load balancer's replicas take turns), else a unary ``Predict``. The
        answer and the errors are ``Predict``'s either way; ``await
        predict(request, timeout=…)``, and ``await predict.close()`` when done.

        A stream carries one request at a time: with every stream busy, a request is a
        unary call, so give ``StreamLimits(most=…)`` the concurrency you predict at.
        A server that refuses another stream (serving and the feature store keep
        ``--stream-slots``, 32 by default, per method) sends the client back to unary
        calls for ``limits.pause`` seconds.

        Measured here (bench/gateway, one stream per caller): 1.86 ms per prediction
        this way against 2.26 ms through unary ``Predict`` at concurrency 1, and a p99
        of 9.7 against 12.0 ms at concurrency 8."""
        return StreamedMethod(
            self,
            "Predict",
            "StreamPredict",
            gateway_pb2.StreamPredictRequest,
            gateway_pb2.StreamPredictResponse,
            ("request", "response"),
            limits,
        )
