"""Prometheus metrics of a server, on a registry the server owns (no process globals)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mlbackend_runtime import fastmetrics

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
