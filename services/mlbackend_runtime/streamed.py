"""A unary method's calls as messages of one long-lived stream (server side).

``StreamOnlineFeatures`` and ``StreamPredict`` carry GetOnlineFeatures and Predict for
callers that make them all the time (the gateway). On this machine a ``grpc.aio``
client's unary call to a thread-pool server took ~530 µs at concurrency 1, a message
on an open stream to the same server ~255 µs: most of a call's cost is opening and
closing it, not the message.

Each request message is an envelope: field 1 the unary request, field 2 its request id,
field 3 what is left of its caller's deadline (a ``Duration``); each response message
field 1 the unary response. :func:`answer_each` answers them one by one, in order,
with the unary handler itself, the request id and deadline bound as a unary call's
would be. The first error ends the stream with the status the unary call would have
had; the caller opens another stream for its next request.

The envelope is read here rather than by protobuf so the unary request stays bytes for
a handler that parses them itself (the feature store's C parser), and the response is
sealed around bytes a handler may have written directly.

A stream holds a server thread while it is open, so a server keeps at most
``limit`` of them per method (:class:`StreamSlots`, ``--stream-slots``; its front has a
thread for each on top of those of its other calls) and refuses more with
RESOURCE_EXHAUSTED, reason STREAM_LIMIT; the caller then makes unary calls. A server
that starts to stop ends its streams (:meth:`StreamSlots.drain`) instead of waiting
out its grace period for callers that keep them open.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import grpc
from google.protobuf.message import Message

from mlbackend_clients import propagation
from mlbackend_runtime import status
from mlbackend_runtime.errors import (
    STREAM_LIMIT,
    DeadlineExceeded,
    DomainError,
    InvalidInput,
    ResourceExhausted,
)
from mlbackend_runtime.interceptor import authorize_message, observe_message
from mlbackend_runtime.protowire import read_varint, varint

STREAMS_PER_METHOD = 32
"""Streams of one method a thread-pool front keeps open at once unless told
(``ServerSettings.stream_slots``)."""


Answer = TypeVar("Answer")


class Envelope(NamedTuple):
    body: bytes
    request_id: str
    timeout: float | None
    shared_with: tuple[str, ...] = ()


@dataclass(eq=False)
class _Open:
    context: grpc.ServicerContext
    busy: bool = False  # answering a message
    ending: bool = False  # to end once that answer is sent


class StreamSlots:
    """The open streams of ``method``, at most ``limit`` at once; a drain ends them."""

    def __init__(self, method: str, limit: int = STREAMS_PER_METHOD) -> None:
        self._method = method
        self._limit = limit
        self._lock = threading.Lock()
        self._open: set[_Open] = set()
        self._draining = False

    def take(self, context: grpc.ServicerContext) -> _Open:
        with self._lock:
            if self._draining:
                # Raises: the status of the call, not a failure of the server.
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            if len(self._open) >= self._limit:
                raise ResourceExhausted(
                    f"{self._limit} {self._method} streams are open, the most this server "
                    f"keeps; make unary calls instead",
                    reason=STREAM_LIMIT,
                )
            stream = _Open(context)
            self._open.add(stream)
            return stream

    def give_back(self, stream: _Open) -> None:
        with self._lock:
            self._open.discard(stream)

    def busy(self, stream: _Open, busy: bool) -> bool:
        """Mark ``stream`` answering (or not); False when it is to end now."""
        with self._lock:
            stream.busy = busy
            return not stream.ending

    def drain(self) -> None:
        """A server that starts to stop ends its streams rather than wait out its grace
        period for them (a caller keeps an idle stream open for as long as it likes): an
        idle one is cancelled now, one answering a message ends once its answer is
        sent. Their callers send what comes next as unary calls, which a stopping
        server refuses, so they reach another replica."""
        with self._lock:
            self._draining = True
            for stream in self._open:
                if stream.busy:
                    stream.ending = True
                else:
                    stream.context.cancel()


def answer_each(
    messages: Iterator[bytes],
    context: grpc.ServicerContext,
    answer: Callable[[bytes], bytes | Message],
    slots: StreamSlots,
    method: str,
) -> Iterator[bytes]:
    """The sealed answer to each enveloped message, in order (a thread-front behaviour's
    body: ``messages`` are the raw request messages); each is counted as a call of the
    unary ``method`` in the server's RPC metrics."""
    stream = slots.take(context)
    try:
        for data in messages:
            slots.busy(stream, True)
            envelope = open_envelope(data)
            with message_context(
                method, envelope.request_id, envelope.timeout, envelope.shared_with
            ):
                response = answer(envelope.body)
            yield seal(response if isinstance(response, bytes) else response.SerializeToString())
            if not slots.busy(stream, False):
                return  # the server is stopping
    finally:
        slots.give_back(stream)


class AioStreams:
    """The open streams of an asyncio servicer's stream methods: what
    :class:`StreamSlots` does for a thread front, without a cap (an asyncio stream holds
    no thread). A drain ends them: an idle one at once, a busy one once its answer is
    sent, both with status OK (the caller's next request opens another stream, which
    a stopping server refuses, so it reaches another replica)."""

    def __init__(self) -> None:
        self._idle: set[asyncio.Task[Any]] = set()
        self._drained: set[asyncio.Task[Any]] = set()
        self._draining = False

    async def answer_each(
        self,
        requests: AsyncIterator[Any],
        method: str,
        answer: Callable[[Any], Awaitable[Answer]],
    ) -> AsyncIterator[Answer]:
        """The answer to each parsed envelope of ``requests`` (a message with
        ``request_id`` and ``timeout``), in order, each counted as a call of the unary
        ``method``."""
        task = asyncio.current_task()
        assert task is not None
        if self._draining:
            return
        self._idle.add(task)
        try:
            async for request in requests:
                self._idle.discard(task)
                timeout = duration_or_none(request, "timeout")
                shared = request.shared_request_ids
                with message_context(method, request.request_id, timeout, shared):
                    response = await answer(request)
                yield response
                if self._draining:
                    return
                self._idle.add(task)
        except asyncio.CancelledError:
            if task not in self._drained:
                raise
            # Woken from its wait for the next request by the drain: the stream ends
            # here, cleanly (gRPC sends no status for a cancelled handler).
            task.uncancel()
        finally:
            self._idle.discard(task)
            self._drained.discard(task)

    def drain(self) -> None:
        self._draining = True
        for task in self._idle:
            self._drained.add(task)
            task.cancel()
        self._idle.clear()


@contextmanager
def message_context(
    method: str, request_id: str, timeout: float | None, shared: Iterable[str] = ()
) -> Iterator[None]:
    """One stream message's request id, deadline and the requests it is shared with,
    bound as a unary call's are; the message is counted as a call of ``method``, with
    the code it ends with."""
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    request_id = propagation.request_id_from(((propagation.REQUEST_ID_KEY, request_id),))
    shared_with = propagation.well_formed(shared) if shared else ()
    deadline = None if timeout is None else time.monotonic() + timeout
    token = propagation.bind(propagation.CallContext(request_id, deadline, shared_with))
    try:
        authorize_message()
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("the request's deadline passed before it arrived")
        yield
    except DomainError as exc:
        code = status.code_for(exc)
        raise
    except BaseException as exc:
        code = (
            grpc.StatusCode.CANCELLED
            if isinstance(exc, asyncio.CancelledError)
            else grpc.StatusCode.INTERNAL
        )
        raise
    finally:
        propagation.unbind(token)
        observe_message(method, code, time.perf_counter() - started, request_id, shared_with)


class StreamContext:
    """A stream's servicer context as one message's handler sees it: a callback added
    for the message (``run_on``'s cancel hook) replaces the previous message's, so a
    long stream does not pile them up on the call; the call's end fires the latest."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._callback: Callable[[], None] | None = None
        context.add_callback(self._fire)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._callback = callback
        return True

    def _fire(self) -> None:
        if self._callback is not None:
            self._callback()


def duration_or_none(message: Message, name: str) -> float | None:
    """A parsed envelope's ``Duration`` field in seconds; None when unset."""
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    return float(value.seconds + value.nanos / 1e9)


def seal(body: bytes) -> bytes:
    """A response envelope around a unary response's wire bytes (field 1)."""
    return b"\x0a" + varint(len(body)) + body


def open_envelope(data: bytes) -> Envelope:
    """The fields of a request envelope; malformed bytes are the caller's error."""
    body = b""
    request_id = ""
    timeout: float | None = None
    shared: list[str] = []
    try:
        position = 0
        while position < len(data):
            tag, position = read_varint(data, position)
            number, kind = tag >> 3, tag & 7
            if kind == 2:
                length, position = read_varint(data, position)
                end = position + length
                if end > len(data):
                    raise ValueError("truncated field")
                value = data[position:end]
                position = end
                if number == 1:
                    body += value  # a repeated message field merges, as protobuf does
                elif number == 2:
                    request_id = value.decode()
                elif number == 3:
                    timeout = _duration(value)
                elif number == 4:
                    shared.append(value.decode())
            elif kind == 0:
                _, position = read_varint(data, position)
            elif kind in (1, 5):
                position += 8 if kind == 1 else 4
                if position > len(data):
                    raise ValueError("truncated field")
            else:
                raise ValueError(f"wire type {kind} of field {number}")
            if number in (1, 2, 3, 4) and kind != 2:
                raise ValueError(f"field {number} has wire type {kind}")
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise InvalidInput.field("request", f"not a valid stream message: {exc}") from None
    return Envelope(body, request_id, timeout, tuple(shared))


def _duration(data: bytes) -> float:
    seconds = nanos = 0
    position = 0
    while position < len(data):
        tag, position = read_varint(data, position)
        if tag & 7 != 0:
            raise ValueError("a Duration holds varints only")
        value, position = read_varint(data, position)
        if value >= 1 << 63:
            value -= 1 << 64  # negative int64 / int32
        if tag >> 3 == 1:
            seconds = value
        elif tag >> 3 == 2:
            nanos = value
    return seconds + nanos / 1e9
