"""Request statistics of one model version and the health verdict drawn from them.

Thresholds are the original spec's: error rate above 10 % or mean latency above 1 s
→ unhealthy; no request for an hour → stale.
"""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ERROR_RATE_LIMIT = 0.10
MEAN_LATENCY_LIMIT = 1.0
STALE_AFTER = 3600.0
# Per version, the most recent requests kept for percentiles (bounded memory).
MAX_SAMPLES = 100_000


class Verdict(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STALE = "stale"


@dataclass(frozen=True)
class LatencySummary:
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float


@dataclass(frozen=True)
class HealthReport:
    request_count: int
    error_count: int
    error_rate: float
    latency: LatencySummary | None
    last_request_time: float | None
    """Wall-clock seconds since the epoch of the last request, ever."""
    verdict: Verdict
    reasons: tuple[str, ...]


class RequestStats:
    """Appends one sample per request; summarises any window of the recent ones."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._samples: collections.deque[tuple[float, float, bool]] = collections.deque(
            maxlen=MAX_SAMPLES
        )
        self.last_request_time: float | None = None
        self.loaded_time = clock()

    def record(self, seconds: float, ok: bool) -> None:
        now = self._clock()
        self._samples.append((now, seconds, ok))
        self.last_request_time = now

    def report(self, window: float = STALE_AFTER) -> HealthReport:
        now = self._clock()
        recent = [s for s in self._samples if s[0] >= now - window]
        count = len(recent)
        errors = sum(1 for s in recent if not s[2])
        rate = errors / count if count else 0.0
        latency = None
        reasons: list[str] = []
        if recent:
            seconds = np.fromiter((s[1] for s in recent), dtype=np.float64, count=count)
            p50, p90, p95, p99 = np.percentile(seconds, [50, 90, 95, 99])
            latency = LatencySummary(float(seconds.mean()), float(p50), float(p90), float(p95),
                                     float(p99), float(seconds.max()))  # fmt: skip
            if rate > ERROR_RATE_LIMIT:
                reasons.append(f"error rate {rate:.1%} above {ERROR_RATE_LIMIT:.0%}")
            if latency.mean > MEAN_LATENCY_LIMIT:
                reasons.append(f"mean latency {latency.mean:.3f} s above {MEAN_LATENCY_LIMIT} s")
        last = self.last_request_time
        idle_since = last if last is not None else self.loaded_time
        if reasons:
            verdict = Verdict.UNHEALTHY
        elif now - idle_since > STALE_AFTER:
            verdict = Verdict.STALE
            reasons.append(f"no requests for {(now - idle_since) / 60:.0f} min")
        else:
            verdict = Verdict.HEALTHY
        return HealthReport(count, errors, rate, latency, last, verdict, tuple(reasons))
