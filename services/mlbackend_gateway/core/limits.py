"""Load shedding: a bounded number of predictions in flight, the rest refused at once."""

from __future__ import annotations

from types import TracebackType

from mlbackend_runtime.errors import ResourceExhausted


class InFlightLimit:
    """``async with limit:`` admits up to ``max_in_flight`` holders; one more is refused
    with RESOURCE_EXHAUSTED instead of queueing behind the rest (a queue only adds
    latency the caller's deadline then pays for)."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.shed = 0

    async def __aenter__(self) -> None:
        if self.in_flight >= self.max_in_flight:
            self.shed += 1
            raise ResourceExhausted(
                f"gateway overloaded: {self.in_flight} predictions in flight; retry later"
            )
        self.in_flight += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.in_flight -= 1
