"""Concurrent upstream calls that share a key leave as one call; each caller gets its rows.

A Python gRPC call costs about the same CPU with 1 row as with 10 on both ends (a
feature read of 1 entity ~300 µs on the store, a Predict of 1 row ~400 µs on serving),
so under load most of the chain's CPU is per call, not per row. The coalescer trades
nothing at low load for fewer calls at high load:

- A call leaves at the end of the event loop's current turn while fewer than
  ``in_flight`` calls for its key are out, together with the callers that arrived in
  the same turn (those a shared call just answered reach the next step in one turn). A
  lone caller never waits for company: no timer, no added latency at concurrency 1.
  Still alone at the end of the turn, it makes its call itself, in its own task: a
  warm loop measured 5 µs of coalescer per lone call this way, 11 through a task and
  a future. After ``quiet_after`` lone calls in a row for its key, a caller does not
  wait out the turn either (at concurrency 1 it never finds company); callers that
  arrive while its call is out queue and leave together, and such a shared call
  brings the wait back.
- Otherwise it queues. When a call for the key comes back, everything queued (up to
  ``max_rows`` rows) leaves as one call, its rows concatenated in arrival order, and
  the answer is split back by row counts.
- A call out longer than ``stall`` (a hung replica, a long pause) does not hold the
  queue: the callers waiting behind it leave as a call of their own, which a
  round-robin channel sends to another replica. Without this, one stuck call would
  hold every request for its key until the dependency's timeout (1-2 s).
- A caller keeps its own deadline: it stops waiting when its deadline passes or when
  it is cancelled; the shared call runs to the latest deadline among its members.
- The shared call carries the first caller's request id, and the others' in
  ``x-shared-request-ids``: the dependency's log of the call names every request.
- Errors stay per caller. A shared failure (the dependency unreachable, overloaded,
  past the deadline) is everyone's; any other failure of a call of several callers
  (a refused input, say) is retried for each caller alone, so each gets the error its
  own rows cause, with its own field paths.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mlbackend_clients import propagation
from mlbackend_runtime.errors import DeadlineExceeded, DependencyUnavailable, ResourceExhausted

Item = TypeVar("Item")
Answer = TypeVar("Answer")

_MAX_KEYS = 4096  # keys whose run of lone calls is remembered

# Failures that are the dependency's, not any caller's rows: every member gets them.
_SHARED = (DependencyUnavailable, DeadlineExceeded, ResourceExhausted)

# send(items) -> the answer for those items, in order; split(answer, start, stop) -> the
# part of it for items[start:stop].
Send = Callable[[Sequence[Item]], Awaitable[Answer]]
Split = Callable[[Answer, int, int], Answer]


@dataclass(frozen=True)
class CoalesceLimits:
    """``max_rows`` of 1 or less turns coalescing off (one call per caller).

    ``in_flight`` calls per key may be out while callers wait for company; a full call
    (``max_rows`` queued), or the queue behind a call out for ``stall`` seconds without
    an answer, leaves at once as long as fewer than ``most_in_flight`` are.
    """

    max_rows: int = 64
    in_flight: int = 1
    most_in_flight: int = 4
    stall: float = 0.05
    """Seconds after the latest call left beyond which the queue stops waiting for it
    (calls take 1-10 ms here under load)."""
    quiet_after: int = 8
    """After this many calls in a row for a key that each carried one caller, a lone
    caller no longer waits out the loop's turn for company; the first call that carries
    several again brings the wait back. 0: always wait."""

    @property
    def enabled(self) -> bool:
        return self.max_rows > 1


@dataclass
class _Waiter(Generic[Item, Answer]):
    items: Sequence[Item]
    send: Send[Item, Answer]
    context: propagation.CallContext | None
    future: asyncio.Future[Answer]


@dataclass
class _Lane(Generic[Item, Answer]):
    queue: deque[_Waiter[Item, Answer]] = field(default_factory=deque)
    rows: int = 0  # queued
    in_flight: int = 0
    left_at: float = 0.0  # loop time the latest call left
    stall_timer: asyncio.TimerHandle | None = None


class Coalescer(Generic[Item, Answer]):
    def __init__(
        self,
        dependency: str,
        limits: CoalesceLimits,
        split: Split[Answer],
        counted: Callable[[int], None] | None = None,
    ) -> None:
        self._dependency = dependency
        self._limits = limits
        self._split = split
        self._counted = counted or (lambda callers: None)  # per upstream call: its callers
        self._lanes: dict[Hashable, _Lane[Item, Answer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lone_calls: dict[Hashable, int] = {}  # per key: calls in a row of one caller

    async def call(self, key: Hashable, items: Sequence[Item], send: Send[Item, Answer]) -> Answer:
        if not self._limits.enabled or len(items) >= self._limits.max_rows:
            self._counted(1)
            return await send(items)
        context = propagation.current()
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining <= 0:
            raise self._late()
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        leads = not lane.queue and lane.in_flight < self._limits.in_flight
        if leads and self._quiet(key):
            # Nobody has come along lately: no turn of the loop to wait out for company.
            self._take_slot(key, lane, callers=1)
            return await self._own_call(key, lane, items, send)
        future: asyncio.Future[Answer] = loop.create_future()
        waiter = _Waiter(items, send, context, future)
        lane.queue.append(waiter)
        lane.rows += len(items)
        if lane.rows >= self._limits.max_rows:
            self._next(key, lane)  # a full call need not wait for one out to come back
        elif not leads:
            self._watch(key, lane)
        if leads and await self._leads_alone(key, lane, waiter):
            return await self._own_call(key, lane, items, send)  # nobody came
        # The caller's cancellation or deadline ends its wait (its future is dropped
        # from the queue, or ignored by a call already out), never the shared call.
        if remaining is None:
            return await future
        timer = loop.call_later(remaining, lambda: _settle(future, error=self._late()))
        try:
            return await future
        finally:
            timer.cancel()

    async def _leads_alone(
        self, key: Hashable, lane: _Lane[Item, Answer], waiter: _Waiter[Item, Answer]
    ) -> bool:
        """The first caller of an idle key waits out this turn of the loop for whoever
        else arrives in it (the callers a shared call just answered reach the next step
        together). True when nobody came: the caller has taken the key's call slot and
        sends its call itself, with no task or future to hand its answer over. False:
        the queue has left as one call (or will, once a call out comes back), and the
        caller's future gets its rows."""
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            waiter.future.cancel()
            self._next(key, lane)  # whoever queued behind it leaves without it
            raise
        limits = self._limits
        if len(lane.queue) == 1 and lane.queue[0] is waiter and lane.in_flight < limits.in_flight:
            lane.queue.popleft()
            lane.rows -= len(waiter.items)
            self._take_slot(key, lane, callers=1)
            return True
        self._next(key, lane)
        return False

    async def _own_call(
        self,
        key: Hashable,
        lane: _Lane[Item, Answer],
        items: Sequence[Item],
        send: Send[Item, Answer],
    ) -> Answer:
        """A lone caller's call, made in its own task once it holds the key's slot; the
        callers queued behind it leave when it comes back."""
        try:
            return await send(items)
        finally:
            lane.in_flight -= 1
            self._next(key, lane)

    def _quiet(self, key: Hashable) -> bool:
        quiet_after = self._limits.quiet_after
        return 0 < quiet_after <= self._lone_calls.get(key, 0)

    def _take_slot(self, key: Hashable, lane: _Lane[Item, Answer], callers: int) -> None:
        """A call for ``key`` with ``callers`` callers leaves now."""
        lane.in_flight += 1
        lane.left_at = asyncio.get_running_loop().time()
        self._counted(callers)
        if callers > 1:
            self._lone_calls.pop(key, None)
            return
        if len(self._lone_calls) >= _MAX_KEYS and key not in self._lone_calls:
            self._lone_calls.clear()  # old versions' keys; a clean start costs a few turns
        self._lone_calls[key] = self._lone_calls.get(key, 0) + 1

    def _late(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"deadline exceeded waiting for {self._dependency}")

    def _watch(self, key: Hashable, lane: _Lane[Item, Answer]) -> None:
        """Keep a stall timer while callers queue behind a call that may still leave
        (none once every slot is taken: a call coming back sends the queue then)."""
        waiting = lane.queue and 0 < lane.in_flight < self._limits.most_in_flight
        if waiting and lane.stall_timer is None:
            lane.stall_timer = asyncio.get_running_loop().call_at(
                lane.left_at + self._limits.stall, self._stalled, key, lane
            )
        elif not waiting and lane.stall_timer is not None:
            lane.stall_timer.cancel()
            lane.stall_timer = None

    def _stalled(self, key: Hashable, lane: _Lane[Item, Answer]) -> None:
        """The latest call has been out ``stall`` seconds: the queue leaves without it."""
        lane.stall_timer = None
        if asyncio.get_running_loop().time() < lane.left_at + self._limits.stall:
            self._watch(key, lane)  # a call left since: wait for that one
        else:
            self._next(key, lane, stalled=True)

    def _next(self, key: Hashable, lane: _Lane[Item, Answer], stalled: bool = False) -> None:
        """Send what is queued for ``key`` as calls, while slots are free."""
        limits = self._limits
        while lane.queue and (
            lane.in_flight < limits.in_flight
            or (
                (stalled or lane.rows >= limits.max_rows) and lane.in_flight < limits.most_in_flight
            )
        ):
            members: list[_Waiter[Item, Answer]] = []
            rows = 0
            while lane.queue and (
                not members or rows + len(lane.queue[0].items) <= limits.max_rows
            ):
                waiter = lane.queue.popleft()
                lane.rows -= len(waiter.items)
                if waiter.future.done():  # its caller gave up while it queued
                    continue
                members.append(waiter)
                rows += len(waiter.items)
            if not members:
                break
            self._take_slot(key, lane, callers=len(members))
            stalled = False  # one call leaves past a stalled one, not one per queued caller
            task = asyncio.get_running_loop().create_task(self._run(key, lane, members))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._watch(key, lane)
        if not lane.queue and lane.in_flight == 0 and self._lanes.get(key) is lane:
            del self._lanes[key]

    async def _run(
        self, key: Hashable, lane: _Lane[Item, Answer], members: list[_Waiter[Item, Answer]]
    ) -> None:
        try:
            await self._share(members)
        except BaseException as exc:
            # Whatever happened (cancelled at shutdown, a bug), nobody is left waiting.
            for member in members:
                _settle(member.future, error=exc)
            raise
        finally:
            lane.in_flight -= 1
            self._next(key, lane)

    async def _share(self, members: list[_Waiter[Item, Answer]]) -> None:
        if len(members) == 1:
            await self._alone(members[0])
            return
        items = [item for member in members for item in member.items]
        propagation.bind(_widest(members))
        try:
            answer = await members[0].send(items)
        except _SHARED as exc:
            for member in members:
                _settle(member.future, error=exc)
            return
        except Exception:
            # Someone's rows were refused: each caller on their own, for their own error
            # (calls of one caller each, counted as such).
            for _ in members:
                self._counted(1)
            await asyncio.gather(*(self._alone(member) for member in members))
            return
        start = 0
        for member in members:
            stop = start + len(member.items)
            _settle(member.future, result=self._split(answer, start, stop))
            start = stop

    async def _alone(self, member: _Waiter[Item, Answer]) -> None:
        if member.future.done():
            return
        if member.context is not None:
            propagation.bind(member.context)
        try:
            answer = await member.send(member.items)
        except Exception as exc:
            _settle(member.future, error=exc)
        else:
            _settle(member.future, result=answer)

    async def close(self) -> None:
        for lane in self._lanes.values():
            if lane.stall_timer is not None:
                lane.stall_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _widest(members: Sequence[_Waiter[Item, Answer]]) -> propagation.CallContext:
    """The shared call's context: the first caller's request id, the others' as the
    ids it is shared with, the latest deadline (a caller whose deadline is nearer stops
    waiting on its own)."""
    contexts = [m.context for m in members if m.context is not None]
    first = contexts[0] if contexts else None
    request_id = first.request_id if first else propagation.new_request_id()
    others = dict.fromkeys(c.request_id for c in contexts[1:] if c.request_id != request_id)
    deadlines = [c.deadline for c in contexts if c.deadline is not None]
    # One member without a deadline (or none with a context): the call has none of its
    # own; the dependency's timeout still applies.
    unbounded = not contexts or len(deadlines) < len(contexts)
    deadline = None if unbounded else max(deadlines)
    return propagation.CallContext(request_id, deadline, tuple(others))


def _settle(
    future: asyncio.Future[Answer],
    *,
    result: Answer | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():
        return
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
