"""Counters and histograms that a request updates without taking a lock.

``prometheus_client``'s metrics take a lock on every update and run several Python
calls around it: a serving request made twelve such updates (its RPC's count, latency
and in-flight gauge; its model version's count, latency, batch size and queue time).
Counted with callgrind at concurrency 1, single-row ModelInfer against a
HistGradientBoosting model, those updates were about a tenth of the instructions the
serving process spent on a request.

Here each thread that records keeps numbers of its own (a ``threading.local``), which
only that thread writes, so an update is a list lookup and a few additions; a scrape
sums every thread's numbers. A scrape that runs while a thread records may, for that
instant, see an observation's value in a histogram's sum before its bucket; a
histogram's count is its +Inf bucket, so count and buckets always agree.
``prometheus_client`` still owns the registry and the exposition: :class:`Family` is a
collector registered on it.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

# A shard's numbers per series: ``[count, sum, bucket counts (not cumulative)...]``;
# a counter or gauge has only ``[value]``.
Series = list[float]
K = TypeVar("K", bound=Hashable)


class Shards(Generic[K]):
    """Each recording thread's numbers, per series key, and their totals for a scrape."""

    def __init__(self, width: int) -> None:
        self._width = width
        self._local = threading.local()
        self._all: list[dict[K, Series]] = []
        self._lock = threading.Lock()  # taken once per thread and on scrapes only

    def mine(self, key: K) -> Series:
        """The calling thread's numbers for ``key``; only this thread writes them."""
        try:
            return self._local.series[key]  # type: ignore[no-any-return]
        except AttributeError:
            series: dict[K, Series] = {}
            self._local.series = series
            with self._lock:
                self._all.append(series)
        except KeyError:
            series = self._local.series
        numbers: Series = [0] * self._width
        # Published to scrapes whole: a dict assignment is atomic under the GIL.
        series[key] = numbers
        return numbers

    def totals(self) -> dict[K, Series]:
        with self._lock:
            shards = list(self._all)
        totals: dict[K, Series] = {}
        for shard in shards:
            for key, numbers in list(shard.items()):
                total = totals.get(key)
                if total is None:
                    totals[key] = list(numbers)
                else:
                    for i, value in enumerate(numbers):
                        total[i] += value
        return totals


def observe(shards: Shards[K], key: K, bounds: tuple[float, ...], value: float) -> None:
    """Record ``value`` in the histogram series ``key`` of ``shards`` (``bounds``: its
    ``le`` bounds without +Inf; a value equal to a bound counts in that bound's bucket)."""
    numbers = shards.mine(key)
    numbers[0] += 1
    numbers[1] += value
    numbers[2 + bisect_left(bounds, value)] += 1


def histogram_width(bounds: Sequence[float]) -> int:
    """Numbers per series of a histogram with ``bounds`` (+Inf added): count, sum, buckets."""
    return 2 + len(bounds) + 1


def histogram_buckets(numbers: Series, bounds: Sequence[float]) -> list[tuple[str, float]]:
    """The cumulative ``(le, count)`` pairs of a histogram series, +Inf last."""
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for bound, count in zip((*bounds, float("inf")), numbers[2:], strict=True):
        running += count
        buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
    return buckets


def add_histogram(
    family: HistogramMetricFamily, labels: Sequence[str], numbers: Series, bounds: Sequence[float]
) -> None:
    family.add_metric(list(labels), histogram_buckets(numbers, bounds), float(numbers[1]))


class Family(Collector):
    """A collector registered on ``registry`` at once: ``collect`` yields the moment's
    totals, ``families`` the same families without samples (its ``describe``)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        collect: Callable[[], Iterator[Metric]],
        families: Callable[[], Sequence[Metric]],
    ) -> None:
        self._collect = collect
        self._families = families
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        return self._collect()

    def describe(self) -> list[Metric]:
        return list(self._families())


def counter(name: str, documentation: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=list(labels))


def gauge(name: str, documentation: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def histogram(name: str, documentation: str, labels: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, labels=list(labels))
