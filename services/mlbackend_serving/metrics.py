"""Per model version Prometheus metrics, on the server's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from mlbackend_runtime.metrics import LATENCY_BUCKETS
from mlbackend_serving.core.model import ModelKey
from mlbackend_serving.core.service import VersionObserver

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUEUE_BUCKETS = (0.0001, 0.00025, *LATENCY_BUCKETS)


class ModelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["model", "version"]
        self.requests = Counter(
            "mlbackend_model_requests", "Prediction requests by model version.", labels,
            registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "mlbackend_model_errors", "Failed prediction requests by model version.", labels,
            registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "mlbackend_model_latency_seconds",
            "Prediction request latency inside serving (validation, queue, model).",
            labels, buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "mlbackend_model_batch_size", "Rows per model call.", labels,
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.queue_time = Histogram(
            "mlbackend_model_queue_seconds", "Time a request waited for its batch to start.",
            labels, buckets=QUEUE_BUCKETS, registry=registry,
        )  # fmt: skip

    def for_version(self, key: ModelKey) -> VersionObserver:
        return _VersionMetrics(self, key)


class _VersionMetrics(VersionObserver):
    def __init__(self, metrics: ModelMetrics, key: ModelKey) -> None:
        labels = (key.name, str(key.version))
        self._requests = metrics.requests.labels(*labels)
        self._errors = metrics.errors.labels(*labels)
        self._latency = metrics.latency.labels(*labels)
        self._batch_size = metrics.batch_size.labels(*labels)
        self._queue_time = metrics.queue_time.labels(*labels)

    def request(self, seconds: float, ok: bool) -> None:
        self._requests.inc()
        if not ok:
            self._errors.inc()
        self._latency.observe(seconds)

    def batch(self, rows: int, requests: int, seconds: float) -> None:
        self._batch_size.observe(rows)

    def queued(self, seconds: float) -> None:
        self._queue_time.observe(seconds)
