"""The gateway's upstream coalescer: shared calls under load, nothing shared alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from mlbackend_clients import propagation
from mlbackend_gateway.upstream.coalesce import CoalesceLimits, Coalescer
from mlbackend_runtime.errors import DeadlineExceeded, DependencyUnavailable, InvalidInput


def _slice(answer: list[str], start: int, stop: int) -> list[str]:
    return answer[start:stop]


class Upstream:
    """Answers each item with its upper-case self; a gate holds calls until opened."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.contexts: list[propagation.CallContext | None] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.refuse: set[str] = set()
        self.down = False

    async def send(self, items: Sequence[str]) -> list[str]:
        self.calls.append(list(items))
        self.contexts.append(propagation.current())
        await self.gate.wait()
        if self.down:
            raise DependencyUnavailable("upstream", "upstream is unavailable")
        refused = [item for item in items if item in self.refuse]
        if refused:
            raise InvalidInput(f"refused {refused}")
        return [item.upper() for item in items]


def coalescer(
    max_rows: int = 64, counted: list[int] | None = None, stall: float = 60.0, quiet_after: int = 8
) -> Coalescer[str, list[str]]:
    """A long ``stall`` by default: only the stall tests have calls leave past one out."""
    return Coalescer(
        "upstream",
        CoalesceLimits(max_rows=max_rows, stall=stall, quiet_after=quiet_after),
        _slice,
        counted.append if counted is not None else None,
    )


async def _turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def _queued(
    upstream: Upstream, batches: Coalescer[str, list[str]], *groups: list[str]
) -> list[asyncio.Task[list[str]]]:
    """Hold the first group's call open, queue the rest behind it, return all the tasks."""
    upstream.gate.clear()
    first = asyncio.create_task(batches.call("k", groups[0], upstream.send))
    await _turns()
    rest = [asyncio.create_task(batches.call("k", group, upstream.send)) for group in groups[1:]]
    await _turns()
    return [first, *rest]


async def test_a_lone_caller_leaves_at_once_with_its_own_call() -> None:
    upstream, counted = Upstream(), []
    batches = coalescer(counted=counted)
    assert await batches.call("k", ["a"], upstream.send) == ["A"]
    assert await batches.call("k", ["b", "c"], upstream.send) == ["B", "C"]
    assert upstream.calls == [["a"], ["b", "c"]]
    assert counted == [1, 1]


async def test_a_lone_caller_makes_its_call_in_its_own_task_with_its_own_context() -> None:
    upstream = Upstream()
    batches = coalescer()
    senders: list[asyncio.Task[object] | None] = []

    async def send(items: Sequence[str]) -> list[str]:
        senders.append(asyncio.current_task())
        return await upstream.send(items)

    async def as_request() -> list[str]:
        propagation.bind(propagation.CallContext("req-alone", None))
        return await batches.call("k", ["a"], send)

    caller = asyncio.create_task(as_request())
    assert await caller == ["A"]
    assert senders == [caller]  # no task or future in between
    assert upstream.contexts[0] is not None and upstream.contexts[0].request_id == "req-alone"


async def test_a_lone_caller_cancelled_during_its_call_lets_the_queue_behind_it_leave() -> None:
    upstream, counted = Upstream(), []
    batches = coalescer(counted=counted)
    tasks = await _queued(upstream, batches, ["a"], ["b"], ["c"])
    tasks[0].cancel()  # its own call, nobody else's, is cancelled with it
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    upstream.gate.set()
    assert await asyncio.gather(*tasks[1:]) == [["B"], ["C"]]
    assert upstream.calls == [["a"], ["b", "c"]]
    assert counted == [1, 2]


async def test_a_first_caller_cancelled_in_its_turn_leaves_the_others_of_that_turn_a_call() -> None:
    upstream = Upstream()
    batches = coalescer()
    first = asyncio.create_task(batches.call("k", ["a"], upstream.send))
    others = [asyncio.create_task(batches.call("k", [x], upstream.send)) for x in "bc"]
    await asyncio.sleep(0)  # all three have arrived; the first waits out its turn
    first.cancel()
    assert await asyncio.gather(*others) == [["B"], ["C"]]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert upstream.calls == [["b", "c"]]


async def _turn_waited(batches: Coalescer[str, list[str]], upstream: Upstream, item: str) -> bool:
    """Whether a lone call for ``item`` waited out a turn of the loop before it was sent:
    a callback queued just before it runs first if it did."""
    order: list[str] = []

    async def send(items: Sequence[str]) -> list[str]:
        order.append("sent")
        return await upstream.send(items)

    asyncio.get_running_loop().call_soon(order.append, "turn")
    assert await batches.call("k", [item], send) == [item.upper()]
    return order[0] == "turn"


async def test_after_a_run_of_lone_calls_a_lone_caller_does_not_wait_out_the_turn() -> None:
    upstream, counted = Upstream(), []
    batches = coalescer(counted=counted, quiet_after=3)
    assert [await _turn_waited(batches, upstream, x) for x in "abcde"] == [
        True, True, True, False, False,
    ]  # fmt: skip
    # Callers arriving while such a call is out queue and leave together...
    tasks = await _queued(upstream, batches, ["f"], ["g"], ["h"])
    upstream.gate.set()
    assert await asyncio.gather(*tasks) == [["F"], ["G"], ["H"]]
    assert upstream.calls[-2:] == [["f"], ["g", "h"]]
    # ...and that shared call brings the wait back: one turn's callers share a call.
    assert await _turn_waited(batches, upstream, "i")
    results = await asyncio.gather(*(batches.call("k", [x], upstream.send) for x in "jk"))
    assert results == [["J"], ["K"]] and upstream.calls[-1] == ["j", "k"]
    assert counted == [1, 1, 1, 1, 1, 1, 2, 1, 2]


async def test_quiet_after_zero_always_waits_out_the_turn() -> None:
    upstream = Upstream()
    batches = coalescer(quiet_after=0)
    assert all([await _turn_waited(batches, upstream, x) for x in "abcdefghijkl"])


async def test_callers_queued_behind_a_call_leave_together_and_get_their_own_rows() -> None:
    upstream, counted = Upstream(), []
    batches = coalescer(counted=counted)
    tasks = await _queued(upstream, batches, ["a"], ["b"], ["c", "d"], ["e"])
    # One call out; the other three wait for it instead of each making their own.
    assert upstream.calls == [["a"]]
    upstream.gate.set()
    results = await asyncio.gather(*tasks)
    assert results == [["A"], ["B"], ["C", "D"], ["E"]]
    assert upstream.calls == [["a"], ["b", "c", "d", "e"]]
    assert counted == [1, 3]


async def test_callers_arriving_in_one_turn_of_the_loop_share_the_first_call() -> None:
    upstream, counted = Upstream(), []
    batches = coalescer(counted=counted)
    results = await asyncio.gather(*(batches.call("k", [x], upstream.send) for x in "abc"))
    assert results == [["A"], ["B"], ["C"]]
    assert upstream.calls == [["a", "b", "c"]]
    assert counted == [3]


async def test_keys_do_not_mix() -> None:
    upstream = Upstream()
    batches = coalescer()
    upstream.gate.clear()
    first = asyncio.create_task(batches.call("v1", ["a"], upstream.send))
    other = asyncio.create_task(batches.call("v2", ["b"], upstream.send))
    await _turns()
    # A different key has its own lane: it does not wait behind v1's call.
    assert upstream.calls == [["a"], ["b"]]
    upstream.gate.set()
    assert await asyncio.gather(first, other) == [["A"], ["B"]]


async def test_a_shared_call_holds_at_most_max_rows() -> None:
    upstream, counted = Upstream(), []
    batches = coalescer(max_rows=3, counted=counted)
    tasks = await _queued(upstream, batches, ["a"], ["b", "c"], ["d"], ["e", "f"], ["g"])
    upstream.gate.set()
    assert await asyncio.gather(*tasks) == [["A"], ["B", "C"], ["D"], ["E", "F"], ["G"]]
    assert upstream.calls == [["a"], ["b", "c", "d"], ["e", "f", "g"]]
    assert counted == [1, 2, 2]
    # A caller with max_rows rows or more never waits for company.
    assert await batches.call("k", ["x", "y", "z"], upstream.send) == ["X", "Y", "Z"]


async def test_a_full_call_leaves_without_waiting_for_the_one_out() -> None:
    upstream, counted = Upstream(), []
    batches = coalescer(max_rows=2, counted=counted)
    # a is out; b + c fill a call, which leaves at once; so do d + e and f + g (four
    # calls out, the most); h waits for one of them to come back.
    tasks = await _queued(upstream, batches, *[[x] for x in "abcdefgh"])
    assert upstream.calls == [["a"], ["b", "c"], ["d", "e"], ["f", "g"]]
    upstream.gate.set()
    assert await asyncio.gather(*tasks) == [[x.upper()] for x in "abcdefgh"]
    assert upstream.calls[4:] == [["h"]]
    assert counted == [1, 2, 2, 2, 1]


async def test_off_means_one_call_per_caller() -> None:
    upstream = Upstream()
    batches = coalescer(max_rows=1)
    tasks = await _queued(upstream, batches, ["a"], ["b"], ["c"])
    assert upstream.calls == [["a"], ["b"], ["c"]]
    upstream.gate.set()
    assert await asyncio.gather(*tasks) == [["A"], ["B"], ["C"]]


async def test_a_refused_row_fails_only_its_caller() -> None:
    upstream, counted = Upstream(), []
    upstream.refuse = {"bad"}
    batches = coalescer(counted=counted)
    tasks = await _queued(upstream, batches, ["a"], ["b"], ["bad"], ["c"])
    upstream.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[:2] == [["A"], ["B"]] and results[3] == ["C"]
    assert isinstance(results[2], InvalidInput) and "bad" in str(results[2])
    # The shared call was refused, then each of its callers went alone.
    assert upstream.calls == [["a"], ["b", "bad", "c"], ["b"], ["bad"], ["c"]]
    assert counted == [1, 3, 1, 1, 1]  # every call counted, with its callers


async def test_a_dependency_failure_is_everyones_and_not_retried() -> None:
    upstream = Upstream()
    batches = coalescer()
    tasks = await _queued(upstream, batches, ["a"], ["b"], ["c"])
    upstream.down = True
    upstream.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, DependencyUnavailable) for r in results)
    assert upstream.calls == [["a"], ["b", "c"]]


async def test_a_queued_caller_keeps_its_own_deadline() -> None:
    upstream = Upstream()
    batches = coalescer()
    upstream.gate.clear()
    first = asyncio.create_task(batches.call("k", ["a"], upstream.send))
    await _turns()

    async def with_deadline(item: str, seconds: float) -> list[str]:
        propagation.bind(propagation.CallContext(f"req-{item}", time.monotonic() + seconds))
        return await batches.call("k", [item], upstream.send)

    hasty = asyncio.create_task(with_deadline("b", 0.05))
    patient = asyncio.create_task(with_deadline("c", 30))
    with pytest.raises(DeadlineExceeded):
        await hasty
    upstream.gate.set()
    assert await first == ["A"] and await patient == ["C"]
    # The one who gave up is not sent; the shared call runs on the remaining deadline.
    assert upstream.calls == [["a"], ["c"]]


async def test_the_shared_call_runs_to_the_latest_deadline_under_the_first_request_id() -> None:
    upstream = Upstream()
    batches = coalescer()
    upstream.gate.clear()
    first = asyncio.create_task(batches.call("k", ["a"], upstream.send))
    await _turns()
    now = time.monotonic()

    async def as_request(item: str, seconds: float) -> list[str]:
        propagation.bind(propagation.CallContext(f"req-{item}", now + seconds))
        return await batches.call("k", [item], upstream.send)

    tasks = [asyncio.create_task(as_request(i, s)) for i, s in (("b", 10), ("c", 20), ("d", 5))]
    await _turns()
    upstream.gate.set()
    assert await asyncio.gather(first, *tasks) == [["A"], ["B"], ["C"], ["D"]]
    shared = upstream.contexts[1]
    assert shared is not None
    assert shared.request_id == "req-b" and shared.deadline == now + 20
    assert shared.shared_with == ("req-c", "req-d")  # sent as x-shared-request-ids


async def test_a_cancelled_caller_is_dropped_from_the_queue() -> None:
    upstream = Upstream()
    batches = coalescer()
    tasks = await _queued(upstream, batches, ["a"], ["b"], ["c"])
    tasks[1].cancel()
    upstream.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] == ["A"] and results[2] == ["C"]
    assert isinstance(results[1], asyncio.CancelledError)
    assert upstream.calls == [["a"], ["c"]]


class Stuck(Upstream):
    """Calls hang until released, except those for items in ``answers``."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.answers: set[str] = set()

    async def send(self, items: Sequence[str]) -> list[str]:
        if not self.answers.intersection(items):
            self.calls.append(list(items))
            await self.release.wait()
            return [item.upper() for item in items]
        return await super().send(items)


async def test_a_stuck_call_does_not_hold_the_callers_queued_behind_it() -> None:
    upstream, counted = Stuck(), []
    batches = coalescer(counted=counted, stall=0.03)
    stuck = asyncio.create_task(batches.call("k", ["a"], upstream.send))
    await _turns()
    upstream.answers = {"b", "c"}  # a replica that answers, say
    started = time.monotonic()
    queued = [asyncio.create_task(batches.call("k", [x], upstream.send)) for x in "bc"]
    # b and c leave together as soon as a has been out 30 ms, not when a comes back.
    assert await asyncio.gather(*queued) == [["B"], ["C"]]
    assert 0.02 <= time.monotonic() - started < 1.0
    assert upstream.calls == [["a"], ["b", "c"]] and not stuck.done()
    upstream.release.set()
    assert await stuck == ["A"]
    assert counted == [1, 2]


async def test_calls_leave_past_stuck_ones_one_stall_apart_up_to_the_most_in_flight() -> None:
    upstream, counted = Stuck(), []
    batches = coalescer(counted=counted, stall=0.02)
    fired: list[object] = []
    stalled = batches._stalled

    def counting(key: object, lane: object) -> None:
        fired.append(key)
        stalled(key, lane)  # type: ignore[arg-type]

    batches._stalled = counting  # type: ignore[method-assign]
    tasks = [asyncio.create_task(batches.call("k", ["a"], upstream.send))]
    await _turns()
    for x in "bcdef":
        tasks.append(asyncio.create_task(batches.call("k", [x], upstream.send)))
        await asyncio.sleep(0.03)  # longer than the stall: each leaves alone, stuck too
    await asyncio.sleep(0.1)
    # Four calls out, every one of them stuck, is the most: e and f wait, and no timer
    # spins meanwhile (the calls did not multiply).
    assert upstream.calls == [["a"], ["b"], ["c"], ["d"]]
    assert len(fired) <= 5
    upstream.release.set()
    assert await asyncio.gather(*tasks) == [[x.upper()] for x in "abcdef"]
    assert upstream.calls[4:] == [["e", "f"]]
    assert counted == [1, 1, 1, 1, 2]
