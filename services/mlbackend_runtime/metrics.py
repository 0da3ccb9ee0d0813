"""Prometheus metrics of a server, on a registry the server owns (no process globals)."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import MetricsHandler

from mlbackend_runtime import errors, fastmetrics

logger = logging.getLogger("mlbackend.metrics")

# Buckets from 0.5 ms to 10 s: single-row predictions sit in the low milliseconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class RpcMetrics:
    """Per-method request counts, errors by status code, latency and calls in flight.

    Recorded without locks (:mod:`mlbackend_runtime.fastmetrics`): every RPC records
    here, so these are the updates a request makes most often."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.registry = registry
        self.service = service
        # Per (service, method, code): count, latency sum, latency buckets.
        self._calls: fastmetrics.Shards[tuple[str, str, str]] = fastmetrics.Shards(
            fastmetrics.histogram_width(LATENCY_BUCKETS)
        )
        self._in_flight: fastmetrics.Shards[None] = fastmetrics.Shards(1)
        fastmetrics.Family(registry, self._collect, self._families)
        self.info = Gauge(
            "mlbackend_server_info",
            "Constant 1, labelled with the mlbackend service this process runs.",
            ["service"],
            registry=registry,
        )
        self.info.labels(service).set(1)

    def started(self) -> None:
        """A call began (paired with :meth:`ended`, on any thread)."""
        self._in_flight.mine(None)[0] += 1

    def ended(self) -> None:
        self._in_flight.mine(None)[0] -= 1

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        fastmetrics.observe(self._calls, (service, method, code), LATENCY_BUCKETS, seconds)

    def _families(
        self,
    ) -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily]:
        return (
            fastmetrics.counter(
                "mlbackend_rpc_requests",
                "RPCs handled, by method and status code.",
                ["service", "method", "code"],
            ),
            fastmetrics.counter(
                "mlbackend_rpc_errors",
                "RPCs that ended with a status other than OK, by method and status code.",
                ["service", "method", "code"],
            ),
            fastmetrics.histogram(
                "mlbackend_rpc_latency_seconds",
                "Time from receiving an RPC to its last response, by method.",
                ["service", "method"],
            ),
            fastmetrics.gauge(
                "mlbackend_rpc_in_flight", "RPCs being handled right now.", ["service"]
            ),
        )

    def _collect(self) -> Iterator[Metric]:
        requests, errors, latency, in_flight = self._families()
        by_method: dict[tuple[str, str], list[float]] = {}
        for (service, method, code), numbers in sorted(self._calls.totals().items()):
            requests.add_metric([service, method, code], numbers[0])
            if code != "OK":
                errors.add_metric([service, method, code], numbers[0])
            total = by_method.setdefault((service, method), [0.0] * len(numbers))
            for i, value in enumerate(numbers):
                total[i] += value
        for (service, method), numbers in by_method.items():
            fastmetrics.add_histogram(latency, [service, method], numbers, LATENCY_BUCKETS)
        in_flight.add_metric([self.service], sum(n[0] for n in self._in_flight.totals().values()))
        yield from (requests, errors, latency, in_flight)


# A scrape connection that says nothing (or stalls its TLS handshake) this long is closed,
# so idle connections cannot pile up threads.
SCRAPE_TIMEOUT_SECONDS = 10.0
# Connections handled at once; more are closed at once (a scraper needs one).
MAX_SCRAPE_CONNECTIONS = 16

# Checks a scrape's Authorization header; raises errors.Unauthenticated or
# errors.PermissionDenied to refuse it.
Authorize = Callable[[str | None], object]


class _ScrapeHandler(MetricsHandler):
    """prometheus_client's exposition (formats, gzip, ``name[]`` filters) behind TLS,
    a bearer token and a timeout."""

    server: _MetricsServer
    timeout = SCRAPE_TIMEOUT_SECONDS

    def setup(self) -> None:
        tls = self.server.tls
        if tls is not None:
            # The handshake runs here, on this connection's thread under its timeout, not
            # in the accept loop where one silent client would stall every scrape.
            self.request.settimeout(self.timeout)
            self.request = tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def do_GET(self) -> None:
        authorize = self.server.authorize
        if authorize is not None:
            try:
                authorize(self.headers.get("Authorization"))
            except errors.Unauthenticated as exc:
                self._refuse(401, str(exc), [("WWW-Authenticate", "Bearer")])
                return
            except errors.PermissionDenied as exc:
                self._refuse(403, str(exc), [])
                return
        super().do_GET()

    def _refuse(self, status: int, message: str, headers: list[tuple[str, str]]) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        for name, value in [("Content-Type", "text/plain; charset=utf-8"), *headers]:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.server.tls is not None:
                # socketserver closes the raw socket it accepted, which the TLS one replaced.
                self.request.close()


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        registry: CollectorRegistry,
        tls: ssl.SSLContext | None,
        authorize: Authorize | None,
    ) -> None:
        self.address_family = family
        self.tls = tls
        self.authorize = authorize
        self._slots = threading.BoundedSemaphore(MAX_SCRAPE_CONNECTIONS)
        super().__init__(address, type("ScrapeHandler", (_ScrapeHandler,), {"registry": registry}))

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hung up, timed out or failed the handshake: its problem, not ours.
        logger.debug("metrics connection from %s failed", client_address, exc_info=True)


def _family(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


@dataclass
class MetricsEndpoint:
    """The running ``/metrics`` HTTP server."""

    host: str
    port: int
    _server: _MetricsServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._server.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    authorize: Authorize | None = None,
) -> MetricsEndpoint:
    """Expose ``registry`` on ``/metrics`` over HTTP, or HTTPS with ``tls``; port 0 picks
    a free one (see ``.port``). With ``authorize``, a scrape whose Authorization header it
    refuses gets a 401 (or 403) and no metrics."""
    family, address = _family(host, port)
    server = _MetricsServer((address, port), family, registry, tls, authorize)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsEndpoint(host, server.server_port, server, thread)
