"""The JSON/HTTP front: the gateway's messages in their protobuf JSON mapping.

Routes: ``POST /v1/models/{model}:predict``, ``POST /v1/models/{model}:predictBatch``,
``GET /v1/models``, ``GET /healthz``, ``GET /metrics``. Requests run through the same
handlers as gRPC (no loopback hop), with the same auth, request id and deadline
propagation; errors are ``{"error": {"code", "status", "message", "details"}}`` with
the HTTP status from :data:`HTTP_STATUS`, the one table from gRPC codes to HTTP.

A deliberately small HTTP/1.1 server on asyncio streams (keep-alive, Content-Length
bodies, ``Expect: 100-continue`` answered; chunked uploads are refused with 411; idle
and slow connections closed, open ones bounded) so the gateway needs no web framework.
Bodies are read and written by ``mlbackend_runtime.protojson``: the messages and errors
of ``json_format``, at a third of its cost to read and a quarter to write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

from mlbackend.gateway.v1 import gateway_pb2 as pb
from mlbackend_clients import propagation
from mlbackend_gateway.core.service import GatewayCore
from mlbackend_gateway.transport import handlers
from mlbackend_runtime import errors, fastmetrics, protojson, status
from mlbackend_runtime.auth import Authenticator, Role

logger = logging.getLogger("mlbackend.gateway.http")

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
"""gRPC status → HTTP status (Google's API mapping; the only such table)."""

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
            415: "Unsupported Media Type", 429: "Too Many Requests",
            499: "Client Closed Request", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable",
            504: "Gateway Timeout"}  # fmt: skip

_SERVICE = "/mlbackend.gateway.v1.InferenceGatewayService/"
MAX_HEADER_BYTES = 64 * 1024
IDLE_SECONDS = 60.0
"""A connection whose next request head has not fully arrived this long after the last
answer (or after it opened) is closed: a kept-alive client gone quiet, or one sending
its head a byte at a time."""
TRANSFER_SECONDS = 30.0
"""A request body not received, or an answer not taken by the client, in this long:
the connection is closed (the body with a 408 first)."""
MAX_CONNECTIONS = 1024
"""Open connections beyond which a new one is answered 503 and closed."""
DEFAULT_DEADLINE_SECONDS = 10.0
"""A request's deadline unless its ``grpc-timeout`` header sets one."""

# ``grpc-timeout`` as gRPC writes it on the wire (and grpc-gateway reads it from HTTP
# callers): one to eight digits and a unit.
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


@dataclass
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


class HttpError(Exception):
    """A failure of the HTTP layer itself (framing, content type, route)."""

    def __init__(self, http_status: int, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message


def _error_body(
    code: grpc.StatusCode, http_status: int, message: str, details: list[dict[str, Any]]
) -> bytes:
    error: dict[str, Any] = {"code": http_status, "status": code.name, "message": message}
    if details:
        error["details"] = details
    return json.dumps({"error": error}).encode()


def error_response(exc: BaseException, request_id: str) -> HttpResponse:
    details: list[dict[str, Any]] = []
    if isinstance(exc, HttpError):
        code, message, http_status = exc.code, exc.message, exc.http_status
    elif isinstance(exc, errors.DomainError):
        code, message = status.code_for(exc), exc.message
        http_status = HTTP_STATUS.get(code, 500)
        details = [json_format.MessageToDict(d) for d in status.details(exc)]
    elif isinstance(exc, grpc.aio.AioRpcError):
        wire = status.from_upstream_error(exc, None)
        code, message = wire.code, wire.message
        http_status = HTTP_STATUS.get(code, 500)
    else:
        logger.exception("unhandled error in the JSON front (request id %s)", request_id,
                         exc_info=exc)  # fmt: skip
        code, message = grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
        http_status = 500
    return HttpResponse(http_status, _error_body(code, http_status, message, details))


Route = Callable[[dict[str, str], bytes, dict[str, list[str]]], Awaitable[HttpResponse]]


class JsonFront:
    def __init__(
        self,
        core: GatewayCore,
        authenticator: Authenticator,
        metrics_registry: CollectorRegistry,
        max_body_bytes: int,
        *,
        metrics_open: bool = False,
    ) -> None:
        """``metrics_open``: ``/metrics`` needs no token even with auth on (otherwise a
        token of any role, as on the service's metrics port)."""
        self._core = core
        self._auth = authenticator
        self._metrics_open = metrics_open
        self._registry = metrics_registry
        self.serving = True
        self._max_body = max_body_bytes
        # Per (route, status): requests answered. Counted without a lock (fastmetrics).
        self._requests: fastmetrics.Shards[tuple[str, int]] = fastmetrics.Shards(1)
        fastmetrics.Family(metrics_registry, self._collect_requests, self._request_families)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0: a free port), over TLS when ``tls`` is given."""
        self._server = await asyncio.start_server(self._connection, host, port, ssl=tls,
                                                  limit=MAX_HEADER_BYTES)  # fmt: skip
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        self.serving = False
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    # --- HTTP/1.1 framing --------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS:
            busy = HttpError(
                503,
                grpc.StatusCode.UNAVAILABLE,
                f"more than {MAX_CONNECTIONS} open connections; retry later",
            )
            self._answer(writer, "connections", error_response(busy, ""), "", keep_alive=False)
            writer.close()
            return
        if task is not None:
            self._connections.add(task)
        try:
            while True:
                keep_alive = await self._one_request(reader, writer)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, TimeoutError):  # fmt: skip
            pass
        except asyncio.CancelledError:
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        async with asyncio.timeout(IDLE_SECONDS):
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = ([*lines[0].split(" "), "", "", ""])[:3]
        headers: dict[str, str] = {}
        lengths: set[str] = set()  # every Content-Length given: two that differ are refused
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip()
                headers[name] = value
                if name == "content-length":
                    lengths.add(value)
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        request_id = propagation.request_id_from(
            [(k, v) for k, v in headers.items() if k in ("traceparent", "x-request-id")]
        )
        body = b""
        response: HttpResponse | None = None
        try:
            body = await self._read_body(reader, writer, headers, lengths)
        except HttpError as refused:
            # Where this body ends, or whether it comes, is unknown: answer, then close.
            response, keep_alive = error_response(refused, request_id), False
        route_name = "unknown"
        if response is None:
            route_name, response = await self._dispatch(method, target, headers, body, request_id)
        self._answer(writer, route_name, response, request_id, keep_alive)
        async with asyncio.timeout(TRANSFER_SECONDS):
            await writer.drain()
        return keep_alive

    async def _read_body(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        lengths: set[str],
    ) -> bytes:
        """The request's body (``lengths``: every Content-Length it gave); HttpError
        when it cannot be read."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(411, grpc.StatusCode.INVALID_ARGUMENT, "send a Content-Length body")
        if len(lengths) > 1:
            # RFC 9112 6.3: where the body ends is ambiguous (request smuggling).
            raise HttpError(
                400, grpc.StatusCode.INVALID_ARGUMENT, "conflicting Content-Length headers"
            )
        length_text = headers.get("content-length", "0") or "0"
        if not length_text.isdigit():
            raise HttpError(
                400,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Content-Length {length_text!r} is not a number of bytes",
            )
        length = int(length_text)
        if length > self._max_body:
            raise HttpError(
                413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"body larger than {self._max_body} bytes"
            )
        if not length:
            return b""
        if headers.get("expect", "").lower() == "100-continue":
            # curl asks before sending a body over 1 MB, then waits a second for the 100.
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            async with asyncio.timeout(TRANSFER_SECONDS):
                return await reader.readexactly(length)
        except TimeoutError:
            raise HttpError(
                408,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the body did not arrive within {TRANSFER_SECONDS:g} s",
            ) from None

    def _answer(
        self,
        writer: asyncio.StreamWriter,
        route_name: str,
        response: HttpResponse,
        request_id: str,
        keep_alive: bool,
    ) -> None:
        self._requests.mine((route_name, response.status))[0] += 1
        out = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            *([f"x-request-id: {request_id}"] if request_id else []),
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{k}: {v}" for k, v in response.headers),
        ]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + response.body)

    # --- routing -----------------------------------------------------------------------

    async def _dispatch(
        self, method: str, target: str, headers: dict[str, str], body: bytes, request_id: str
    ) -> tuple[str, HttpResponse]:
        """The route's name (the metric's label; ``unknown`` for no route) and its answer."""
        url = urlsplit(target)
        path = unquote(url.path)
        if path == "/healthz":
            return "healthz", self._health(method)
        route = "unknown"
        try:
            if path == "/metrics":
                route = "metrics"
                return route, self._metrics(method, headers)
            prefix, model = "/v1/models/", ""
            if path == "/v1/models":
                route = "list_models"
            elif path.startswith(prefix) and ":" in path[len(prefix) :]:
                model, _, verb = path[len(prefix) :].rpartition(":")
                route = {"predict": "predict", "predictBatch": "predict_batch"}.get(verb, route)
            if route == "unknown":
                raise HttpError(404, grpc.StatusCode.NOT_FOUND, f"no route {method} {path}")
            seconds = _timeout(headers.get("grpc-timeout"))
            token = propagation.bind(
                propagation.CallContext(request_id, time.monotonic() + seconds)
            )
            try:
                return route, await self._route(route, method, headers, body, url.query, model)
            finally:
                propagation.unbind(token)
        except Exception as exc:
            return route, error_response(exc, request_id)

    async def _route(
        self,
        route: str,
        method: str,
        headers: dict[str, str],
        body: bytes,
        query_text: str,
        model: str,
    ) -> HttpResponse:
        if route == "list_models":
            self._need(method, "GET")
            self._authorize("ListModels", headers)
            query = parse_qs(query_text)
            size = query.get("page_size", ["0"])[0]
            request = pb.ListModelsRequest(
                page_size=int(size) if size.isdigit() else 0,
                page_token=query.get("page_token", [""])[0],
            )
            return _json(await handlers.list_models(self._core, request))
        self._need(method, "POST")
        if route == "predict":
            self._authorize("Predict", headers)
            predict = _parse(headers, body, pb.PredictRequest(), model)
            return _json(await handlers.predict(self._core, predict))
        self._authorize("PredictBatch", headers)
        batch = _parse(headers, body, pb.PredictBatchRequest(), model)
        return _json(await handlers.predict_batch(self._core, batch))

    def _need(self, method: str, wanted: str) -> None:
        if method != wanted:
            raise HttpError(405, grpc.StatusCode.UNIMPLEMENTED, f"use {wanted}")

    def _authorize(self, rpc: str, headers: dict[str, str]) -> None:
        self._auth.authorize(_SERVICE + rpc, headers.get("authorization"))

    def _health(self, method: str) -> HttpResponse:
        serving = self.serving
        body = json.dumps({"status": "SERVING" if serving else "NOT_SERVING"}).encode()
        return HttpResponse(200 if serving else 503, body)

    @staticmethod
    def _request_families() -> tuple[CounterMetricFamily]:
        return (
            fastmetrics.counter(
                "mlbackend_http_requests",
                "JSON/HTTP front requests by route and HTTP status.",
                ["route", "code"],
            ),
        )

    def _collect_requests(self) -> Iterator[Metric]:
        (requests,) = self._request_families()
        for (route, code), (count,) in sorted(self._requests.totals().items()):
            requests.add_metric([route, str(code)], count)
        yield requests

    def _metrics(self, method: str, headers: dict[str, str]) -> HttpResponse:
        if not self._metrics_open:
            self._auth.require(Role.READER, headers.get("authorization"), "/metrics")
        return HttpResponse(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)


def _json(message: Message) -> HttpResponse:
    return HttpResponse(200, protojson.to_json(message))


def _timeout(text: str | None) -> float:
    """Seconds the caller gives its request (``grpc-timeout: 250m``), as a gRPC deadline."""
    if text is None:
        return DEFAULT_DEADLINE_SECONDS
    digits, unit = text[:-1], _TIMEOUT_UNITS.get(text[-1:])
    if unit is None or not (1 <= len(digits) <= 8 and digits.isascii() and digits.isdigit()):
        raise HttpError(
            400,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"grpc-timeout {text!r}: give 1-8 digits and a unit (H, M, S, m, u, n), e.g. 250m",
        )
    return int(digits) * unit


def _parse(headers: dict[str, str], body: bytes, message: Any, model: str) -> Any:
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HttpError(415, grpc.StatusCode.INVALID_ARGUMENT,
                        "Content-Type must be application/json")  # fmt: skip
    if body.lstrip()[:1] not in (b"{", b""):
        # json_format would say "Failed to parse 1 field" of a list or a number.
        name = message.DESCRIPTOR.name
        raise errors.InvalidInput.field("body", f"must be a JSON object (a {name})")
    try:
        protojson.parse(body.decode("utf-8") or "{}", message)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise errors.InvalidInput.field("body", f"not a valid JSON request: {exc}") from None
    if message.model and message.model != model:
        raise errors.InvalidInput.field("model", "differs from the model in the URL")
    message.model = model
    return message
