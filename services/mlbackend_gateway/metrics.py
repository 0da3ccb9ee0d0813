"""The gateway's own Prometheus series, on the server's injected registry."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records_dropped = Counter(
            "mlbackend_gateway_prediction_records_dropped_total",
            "Prediction records not delivered to monitoring, by reason.",
            ("reason",),
            registry=registry,
        )
        self.records_sent = Counter(
            "mlbackend_gateway_prediction_records_sent_total",
            "Prediction records delivered to monitoring.",
            registry=registry,
        )
        self.shadow_dropped = Counter(
            "mlbackend_gateway_shadow_dropped_total",
            "Shadow scorings skipped because too many were running.",
            registry=registry,
        )
        self.registry_watch_live = Gauge(
            "mlbackend_gateway_registry_watch_live",
            "1 while the registry watch keeps the version cache exact, 0 while it uses a TTL.",
            registry=registry,
        )

        self.upstream_calls = Counter(
            "mlbackend_gateway_upstream_calls_total",
            "Feature reads and predictions sent upstream, by dependency.",
            ("dependency",),
            registry=registry,
        )
        self.upstream_callers = Counter(
            "mlbackend_gateway_upstream_callers_total",
            "Requests those calls carried (callers_total / calls_total = callers per call; "
            "above 1 while concurrent requests are coalesced; a request sent again alone "
            "after its shared call was refused counts again).",
            ("dependency",),
            registry=registry,
        )

    def upstream(self, dependency: str) -> Callable[[int], None]:
        """What a coalescer reports per upstream call: how many callers it answered."""
        calls = self.upstream_calls.labels(dependency)
        callers = self.upstream_callers.labels(dependency)

        def counted(count: int) -> None:
            calls.inc()
            callers.inc(count)

        return counted

    def drop(self, reason: str, count: int) -> None:
        self.records_dropped.labels(reason).inc(count)

    def sent(self, count: int) -> None:
        self.records_sent.inc(count)

    def shadow_drop(self, count: int) -> None:
        self.shadow_dropped.inc(count)
