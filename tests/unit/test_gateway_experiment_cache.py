"""The gateway's cache of running experiments: one store read per expiry, not one per request."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mlbackend_gateway.core.experiments import Experiment, ExperimentRouter


class Store:
    """Answers ``running_for`` after a gate opens; counts the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.asked = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.current: Experiment | None = None
        self.fail = False

    async def running_for(self, model: str) -> Experiment | None:
        self.reads += 1
        self.asked.set()
        answer = self.current
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("store down")
        return answer

    def __getattr__(self, name: str) -> Any:  # the rest of ExperimentStore is unused here
        raise AttributeError(name)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def experiment(name: str) -> Experiment:
    return Experiment(name=name, model="m", variants=())


async def test_concurrent_requests_share_one_read_per_expiry() -> None:
    store, clock = Store(), Clock()
    router = ExperimentRouter(store, ttl=1.0, clock=clock)  # type: ignore[arg-type]
    store.current = experiment("a")
    store.gate.clear()
    waiting = [asyncio.create_task(router.running("m")) for _ in range(32)]
    await asyncio.sleep(0)
    store.gate.set()
    assert {e.name for e in await asyncio.gather(*waiting) if e} == {"a"}
    assert store.reads == 1
    clock.now += 0.5
    assert (await router.running("m")) == experiment("a") and store.reads == 1  # cached
    clock.now += 0.6
    store.current = experiment("b")
    answers = await asyncio.gather(*(router.running("m") for _ in range(16)))
    assert {e.name for e in answers if e} == {"b"} and store.reads == 2


async def test_a_failed_read_fails_its_callers_and_is_not_cached() -> None:
    store = Store()
    router = ExperimentRouter(store, ttl=1.0, clock=Clock())  # type: ignore[arg-type]
    store.fail = True
    results = await asyncio.gather(*(router.running("m") for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and store.reads == 1
    store.fail = False
    store.current = experiment("a")
    assert await router.running("m") == experiment("a") and store.reads == 2


async def test_a_read_that_predates_forget_is_not_cached() -> None:
    store = Store()
    router = ExperimentRouter(store, ttl=60.0, clock=Clock())  # type: ignore[arg-type]
    store.current = experiment("old")
    store.gate.clear()
    early = asyncio.create_task(router.running("m"))
    await store.asked.wait()
    router.forget("m")  # e.g. stopped through this replica while the read was out
    store.current = None
    store.gate.set()
    assert (await early) == experiment("old")  # its caller asked before the change
    assert await router.running("m") is None and store.reads == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_read() -> None:
    store = Store()
    router = ExperimentRouter(store, ttl=1.0, clock=Clock())  # type: ignore[arg-type]
    store.current = experiment("a")
    store.gate.clear()
    first = asyncio.create_task(router.running("m"))
    second = asyncio.create_task(router.running("m"))
    await asyncio.sleep(0)
    first.cancel()
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == experiment("a") and store.reads == 1
