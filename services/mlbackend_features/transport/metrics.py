"""Freshness of each feature view as Prometheus metrics, computed at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mlbackend_features.core.model import MICROS
from mlbackend_features.core.service import FeatureStore


class FreshnessCollector(Collector):
    def __init__(self, store: FeatureStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        last = GaugeMetricFamily(
            "mlbackend_features_last_write_timestamp_seconds",
            "Wall-clock time of the last acknowledged write, per feature view.",
            labels=["feature_view"],
        )
        lag = GaugeMetricFamily(
            "mlbackend_features_freshness_lag_seconds",
            "Now minus the newest event time written, per feature view.",
            labels=["feature_view"],
        )
        newest = GaugeMetricFamily(
            "mlbackend_features_newest_event_timestamp_seconds",
            "Newest event time written, per feature view.",
            labels=["feature_view"],
        )
        now = self._store.now_us()
        for view, state in sorted(self._store.freshness.items()):
            last.add_metric([view], state.last_write_us / MICROS)
            lag.add_metric([view], max(now - state.newest_event_us, 0) / MICROS)
            newest.add_metric([view], state.newest_event_us / MICROS)
        behind = GaugeMetricFamily(
            "mlbackend_features_online_behind",
            "1 while acknowledged batches wait to be replayed into the online store.",
        )
        behind.add_metric([], 1.0 if self._store.online_behind else 0.0)
        yield from (last, lag, newest, behind)
