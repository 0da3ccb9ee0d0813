"""Prometheus metrics of a server, on a registry the server owns (no process globals)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Buckets from 0.5 ms to 10 s: single-row predictions sit in the low milliseconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class RpcMetrics:
    """Per-method request counts, errors by status code, latency and calls in flight."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.registry = registry
        self.requests = Counter(
            "mlbackend_rpc_requests",
            "RPCs handled, by method and status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.errors = Counter(
            "mlbackend_rpc_errors",
            "RPCs that ended with a status other than OK, by method and status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "mlbackend_rpc_latency_seconds",
            "Time from receiving an RPC to its last response, by method.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "mlbackend_rpc_in_flight",
            "RPCs being handled right now.",
            ["service"],
            registry=registry,
        ).labels(service)
        self.info = Gauge(
            "mlbackend_server_info",
            "Constant 1, labelled with the mlbackend service this process runs.",
            ["service"],
            registry=registry,
        )
        self.info.labels(service).set(1)
        # Bounded by methods times status codes.
        self._children: dict[tuple[str, str, str], tuple[Counter, Counter | None, Histogram]] = {}

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        key = (service, method, code)
        children = self._children.get(key)
        if children is None:
            # ``labels()`` takes a lock and builds a key on every call: bind once.
            children = (
                self.requests.labels(service, method, code),
                self.errors.labels(service, method, code) if code != "OK" else None,
                self.latency.labels(service, method),
            )
            self._children[key] = children
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)


@dataclass
class MetricsEndpoint:
    """The running ``/metrics`` HTTP server."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Expose ``registry`` over HTTP; port 0 picks a free one (see ``.port``)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(host, server.server_port, server, thread)
