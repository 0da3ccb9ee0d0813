"""The lock-free metrics: exact totals from many threads, Prometheus' bucket rules, and
the same exposition (names, labels, values) the ``prometheus_client`` metrics had."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlbackend_runtime import fastmetrics
from mlbackend_runtime.metrics import LATENCY_BUCKETS, RpcMetrics
from mlbackend_serving.core.model import ModelKey
from mlbackend_serving.metrics import ModelMetrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_totals_from_many_threads_are_exact() -> None:
    shards: fastmetrics.Shards[str] = fastmetrics.Shards(fastmetrics.histogram_width((1.0, 2.0)))
    start = threading.Barrier(8)

    def record() -> None:
        start.wait()
        for i in range(5_000):
            fastmetrics.observe(shards, "a", (1.0, 2.0), float(i % 4))  # 0, 1, 2, 3

    threads = [threading.Thread(target=record) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    count, total, *buckets = shards.totals()["a"]
    assert count == 40_000
    assert total == 8 * 5_000 / 4 * (0 + 1 + 2 + 3)
    # le="1" holds 0 and 1 (a value equal to a bound is in that bound's bucket).
    assert buckets == [20_000, 10_000, 10_000]
    assert fastmetrics.histogram_buckets([count, total, *buckets], (1.0, 2.0)) == [
        ("1.0", 20_000),
        ("2.0", 30_000),
        ("+Inf", 40_000),
    ]


def test_rpc_metrics_exposition() -> None:
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry, "serving")
    metrics.started()
    metrics.started()
    metrics.ended()
    metrics.observe("svc", "Predict", "OK", 0.0007)
    metrics.observe("svc", "Predict", "OK", 0.002)
    metrics.observe("svc", "Predict", "NOT_FOUND", 0.5)
    samples = _samples(registry)
    labels = (("method", "Predict"), ("service", "svc"))
    ok = (("code", "OK"), *labels)
    missing = (("code", "NOT_FOUND"), *labels)
    assert samples[("mlbackend_rpc_requests_total", ok)] == 2
    assert samples[("mlbackend_rpc_requests_total", missing)] == 1
    assert samples[("mlbackend_rpc_errors_total", missing)] == 1
    assert ("mlbackend_rpc_errors_total", ok) not in samples
    # One latency histogram per method, whatever the code.
    assert samples[("mlbackend_rpc_latency_seconds_count", labels)] == 3
    assert samples[("mlbackend_rpc_latency_seconds_sum", labels)] == 0.0007 + 0.002 + 0.5
    assert samples[("mlbackend_rpc_latency_seconds_bucket", (("le", "0.0005"), *labels))] == 0
    assert samples[("mlbackend_rpc_latency_seconds_bucket", (("le", "0.001"), *labels))] == 1
    assert samples[("mlbackend_rpc_latency_seconds_bucket", (("le", "0.0025"), *labels))] == 2
    assert samples[("mlbackend_rpc_latency_seconds_bucket", (("le", "0.5"), *labels))] == 3
    assert samples[("mlbackend_rpc_latency_seconds_bucket", (("le", "+Inf"), *labels))] == 3
    assert samples[("mlbackend_rpc_in_flight", (("service", "serving"),))] == 1
    assert samples[("mlbackend_server_info", (("service", "serving"),))] == 1
    assert len(LATENCY_BUCKETS) + 1 == sum(
        1 for name, _ in samples if name == "mlbackend_rpc_latency_seconds_bucket"
    )


def test_model_metrics_exposition_from_the_load_on() -> None:
    registry = CollectorRegistry()
    observer = ModelMetrics(registry).for_version(ModelKey("fraud", 3))
    labels = (("model", "fraud"), ("version", "3"))
    # A loaded version is exported with zeros before its first request, as before.
    assert _samples(registry)[("mlbackend_model_requests_total", labels)] == 0
    observer.request(0.003, ok=True)
    observer.request(0.004, ok=False)
    observer.batch(rows=3, requests=2, seconds=0.001)
    observer.queued(0.00005)
    samples = _samples(registry)
    assert samples[("mlbackend_model_requests_total", labels)] == 2
    assert samples[("mlbackend_model_errors_total", labels)] == 1
    assert samples[("mlbackend_model_latency_seconds_count", labels)] == 2
    assert samples[("mlbackend_model_batch_size_sum", labels)] == 3
    assert samples[("mlbackend_model_batch_size_bucket", (("le", "2.0"), *labels))] == 0
    assert samples[("mlbackend_model_batch_size_bucket", (("le", "4.0"), *labels))] == 1
    assert samples[("mlbackend_model_queue_seconds_bucket", (("le", "0.0001"), *labels))] == 1
