"""The gateway's own Prometheus series, on the server's injected registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, Metric

from mlbackend_runtime import fastmetrics


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

        # Per dependency: calls, callers. Counted on every upstream call, without a lock.
        self._upstream: fastmetrics.Shards[str] = fastmetrics.Shards(2)
        fastmetrics.Family(registry, self._collect, self._families)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            fastmetrics.counter(
                "mlbackend_gateway_upstream_calls",
                "Feature reads and predictions sent upstream, by dependency.",
                ["dependency"],
            ),
            fastmetrics.counter(
                "mlbackend_gateway_upstream_callers",
                "Requests those calls carried (callers_total / calls_total = callers per "
                "call; above 1 while concurrent requests are coalesced; a request sent again "
                "alone after its shared call was refused counts again).",
                ["dependency"],
            ),
        )

    def _collect(self) -> Iterator[Metric]:
        calls, callers = self._families()
        for dependency, (count, carried) in sorted(self._upstream.totals().items()):
            calls.add_metric([dependency], count)
            callers.add_metric([dependency], carried)
        yield from (calls, callers)

    def upstream(self, dependency: str) -> Callable[[int], None]:
        """What a coalescer reports per upstream call: how many callers it answered."""
        shards = self._upstream
        shards.mine(dependency)  # exported from the start, with zeros

        def counted(count: int) -> None:
            numbers = shards.mine(dependency)
            numbers[0] += 1
            numbers[1] += count

        return counted

    def drop(self, reason: str, count: int) -> None:
        self.records_dropped.labels(reason).inc(count)

    def sent(self, count: int) -> None:
        self.records_sent.inc(count)

    def shadow_drop(self, count: int) -> None:
        self.shadow_dropped.inc(count)
