"""Per model version metrics, on the server's own registry.

Recorded without locks (``mlbackend_runtime.fastmetrics``): each prediction request
records its count and latency, and each model call its batch size and queue time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from mlbackend_runtime import fastmetrics
from mlbackend_runtime.metrics import LATENCY_BUCKETS
from mlbackend_serving.core.model import ModelKey
from mlbackend_serving.core.service import VersionObserver

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUEUE_BUCKETS = (0.0001, 0.00025, *LATENCY_BUCKETS)

_LABELS = ["model", "version"]
Labels = tuple[str, str]


class ModelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # Per (model, version): requests, errors.
        self.requests: fastmetrics.Shards[Labels] = fastmetrics.Shards(2)
        self.latency: fastmetrics.Shards[Labels] = fastmetrics.Shards(
            fastmetrics.histogram_width(LATENCY_BUCKETS)
        )
        self.batch_size: fastmetrics.Shards[Labels] = fastmetrics.Shards(
            fastmetrics.histogram_width(BATCH_SIZE_BUCKETS)
        )
        self.queue_time: fastmetrics.Shards[Labels] = fastmetrics.Shards(
            fastmetrics.histogram_width(QUEUE_BUCKETS)
        )
        fastmetrics.Family(registry, self._collect, self._families)

    def for_version(self, key: ModelKey) -> VersionObserver:
        return _VersionMetrics(self, (key.name, str(key.version)))

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
        HistogramMetricFamily,
    ]:
        return (
            fastmetrics.counter(
                "mlbackend_model_requests", "Prediction requests by model version.", _LABELS
            ),
            fastmetrics.counter(
                "mlbackend_model_errors", "Failed prediction requests by model version.", _LABELS
            ),
            fastmetrics.histogram(
                "mlbackend_model_latency_seconds",
                "Prediction request latency inside serving (validation, queue, model).",
                _LABELS,
            ),
            fastmetrics.histogram("mlbackend_model_batch_size", "Rows per model call.", _LABELS),
            fastmetrics.histogram(
                "mlbackend_model_queue_seconds",
                "Time a request waited for its batch to start.",
                _LABELS,
            ),
        )

    def _collect(self) -> Iterator[Metric]:
        requests, errors, latency, batch_size, queue_time = self._families()
        for labels, (count, failed) in sorted(self.requests.totals().items()):
            requests.add_metric(labels, count)
            errors.add_metric(labels, failed)
        for family, shards, bounds in (
            (latency, self.latency, LATENCY_BUCKETS),
            (batch_size, self.batch_size, BATCH_SIZE_BUCKETS),
            (queue_time, self.queue_time, QUEUE_BUCKETS),
        ):
            for labels, numbers in sorted(shards.totals().items()):
                fastmetrics.add_histogram(family, labels, numbers, bounds)
        yield from (requests, errors, latency, batch_size, queue_time)


class _VersionMetrics(VersionObserver):
    def __init__(self, metrics: ModelMetrics, labels: Labels) -> None:
        self._labels = labels
        self._metrics = metrics
        # Exported from the load on (zeros), as before its first request.
        for shards in (metrics.requests, metrics.latency, metrics.batch_size, metrics.queue_time):
            shards.mine(labels)

    def request(self, seconds: float, ok: bool) -> None:
        counts = self._metrics.requests.mine(self._labels)
        counts[0] += 1
        if not ok:
            counts[1] += 1
        fastmetrics.observe(self._metrics.latency, self._labels, LATENCY_BUCKETS, seconds)

    def batch(self, rows: int, requests: int, seconds: float) -> None:
        fastmetrics.observe(self._metrics.batch_size, self._labels, BATCH_SIZE_BUCKETS, rows)

    def queued(self, seconds: float) -> None:
        fastmetrics.observe(self._metrics.queue_time, self._labels, QUEUE_BUCKETS, seconds)
