"""A unary method called as messages of its stream sibling, over long-lived streams:
StreamOnlineFeatures for GetOnlineFeatures, serving's and the gateway's StreamPredict
for Predict (the server side is ``mlbackend_runtime.streamed``).

Measured here, a ``grpc.aio`` unary call to a thread-pool server took ~530 µs at
concurrency 1 and a message on an open stream ~255 µs (~190 against ~105 µs of the
caller's own CPU): most of a Python gRPC call is opening and closing it. The gateway
calls the feature store and serving this way; :class:`StreamedMethod` is the same for
any caller that makes many calls of one method (``GatewayClient.streamed_predict``).

- A stream carries one request at a time: a caller takes an idle stream (oldest
  first, so streams opened on different replicas take turns), writes its envelope,
  reads the answer and gives the stream back. With none idle it opens one, up to
  ``most``; beyond that the caller makes the unary call.
- A stream idle for ``idle`` seconds is closed: each holds a thread of the server
  while open, and a quiet gateway need not hold any.
- A stream is closed after ``uses`` messages or ``lifetime`` seconds, and its next
  caller opens a new one, which the channel's round_robin sends to the next ready
  replica. That is what spreads the load over replicas (a stream stays on the one it
  opened on) and gives a replica started later its share; opening a stream costs
  about one unary call, so over ``uses`` messages ~1 %.
- The caller's deadline bounds its wait; an answer that does not come in time ends the
  stream (a late one would answer the next caller) with DEADLINE_EXCEEDED, as the unary
  call would have ended.
- The server's verdict on a request (INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED…)
  ends the stream with the status the unary call would have had: it is raised as
  that call's error. Anything else that ends a stream (the replica went away, the
  server shut down or refused another stream) is the stream's failure, not the
  request's: the request is made as a unary call, which the channel's retry policy
  covers. A server without the stream method (UNIMPLEMENTED), or one that refuses a
  new stream (RESOURCE_EXHAUSTED, ``STREAM_LIMIT``), is not asked again for ``pause``
  seconds; a request shed by a full server (``OVERLOADED``) is that request's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from mlbackend_clients import propagation
from mlbackend_clients.base import ServiceClient
from mlbackend_clients.errors import STREAM_LIMIT, decode_error

logger = logging.getLogger("mlbackend.clients")

Request = TypeVar("Request")
Response = TypeVar("Response")
Unary = TypeVar("Unary")
UnaryAnswer = TypeVar("UnaryAnswer")

# Ends of a stream that are the server's answer to the request on it.
_VERDICTS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


@dataclass(frozen=True)
class StreamLimits:
    """``most`` 0 turns streams off: every request is a unary call."""

    most: int = 4
    uses: int = 100
    lifetime: float = 10.0
    idle: float = 1.0
    pause: float = 30.0


@dataclass
class _Stream:
    call: Any  # grpc.aio.StreamStreamCall
    opened: float
    used: int = 0
    idle_since: float = 0.0


class StreamLane(Generic[Request, Response]):
    """``method`` of ``client`` (a stream of envelopes ``Request`` → ``Response``)."""

    def __init__(
        self,
        client: ServiceClient[Any],
        method: str,
        request_type: type[Request],
        response_type: type[Response],
        limits: StreamLimits | None = None,
    ) -> None:
        self._client = client
        self._path = client.method(method)
        self._open_call = client.channel.stream_stream(
            self._path,
            request_serializer=request_type.SerializeToString,  # type: ignore[attr-defined]
            response_deserializer=response_type.FromString,  # type: ignore[attr-defined]
        )
        self._limits = limits or StreamLimits()
        self._idle: deque[_Stream] = deque()
        self._open = 0
        self._paused_until = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def open(self) -> int:
        """Streams open now, idle or carrying a request."""
        return self._open

    async def exchange(self, envelope: Request, timeout: float | None) -> Response | None:
        """The answer to ``envelope`` (its timeout set here, and the request ids of the
        call being served, if any), or None when no stream can carry it: the caller then
        makes the unary call."""
        stream = self._take()
        if stream is None:
            return None
        _stamp(envelope, timeout)
        try:
            async with asyncio.timeout(timeout):
                await stream.call.write(envelope)
                answer = await stream.call.read()
        except TimeoutError:
            self._drop(stream)
            raise _late(self._path) from None
        except asyncio.CancelledError:
            self._drop(stream)  # an answer may still come: the stream is of no more use
            raise
        except grpc.aio.AioRpcError as exc:
            self._drop(stream)
            self._ended(stream, exc)  # raises the server's verdict on the request
            return None
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            self._drop(stream)  # written to after it ended: try the call
            logger.debug("stream %s unusable: %s", self._path, exc)
            return None
        if answer is grpc.aio.EOF:
            self._drop(stream)
            return None
        stream.used += 1
        self._give_back(stream)
        return answer  # type: ignore[no-any-return]

    def _ended(self, stream: _Stream, error: grpc.aio.AioRpcError) -> None:
        code = error.code()
        if code == grpc.StatusCode.UNIMPLEMENTED or (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and _stream_refused(error, stream)
        ):
            # An older server, or one with every stream slot taken: calls for a while.
            self._paused_until = time.monotonic() + self._limits.pause
            logger.info(
                "%s: %s (%s); unary calls for %.0f s",
                self._path, code.name, error.details(), self._limits.pause,
            )  # fmt: skip
        elif code in _VERDICTS:
            raise error

    def _take(self) -> _Stream | None:
        limits = self._limits
        now = time.monotonic()
        while self._idle:
            stream = self._idle.popleft()
            if stream.used < limits.uses and now - stream.opened < limits.lifetime:
                return stream
            self._close(stream)
        if self._open >= limits.most or now < self._paused_until:
            return None
        self._open += 1
        return _Stream(self._start(), now)

    def _start(self) -> Any:
        # The stream outlives the request that opens it: an id and no deadline of its
        # own, not the request's.
        token = propagation.bind(propagation.CallContext(propagation.new_request_id()))
        try:
            outgoing = self._client.outgoing
            metadata = (
                outgoing.prepare(self._path, None, single_response=False)[1]
                if outgoing is not None
                else None
            )
            return self._open_call(metadata=metadata)
        finally:
            propagation.unbind(token)

    def _give_back(self, stream: _Stream) -> None:
        stream.idle_since = time.monotonic()
        self._idle.append(stream)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._limits.idle, self._close_idle)

    def _close_idle(self) -> None:
        """Close the streams idle for ``idle`` seconds (the oldest given back are first)."""
        self._sweep = None
        stale = time.monotonic() - self._limits.idle
        while self._idle and self._idle[0].idle_since <= stale:
            self._close(self._idle.popleft())
        if self._idle:
            delay = self._idle[0].idle_since - stale
            self._sweep = asyncio.get_running_loop().call_later(delay, self._close_idle)

    def _drop(self, stream: _Stream) -> None:
        self._open -= 1
        stream.call.cancel()

    def _close(self, stream: _Stream) -> None:
        """End a stream that has done its share, letting the server finish it cleanly."""
        self._open -= 1
        task = asyncio.get_running_loop().create_task(_finish(stream.call))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._close(self._idle.popleft())
        await asyncio.gather(*self._closing, return_exceptions=True)


class StreamedMethod(Generic[Request, Response, Unary, UnaryAnswer]):
    """Calls of ``unary`` (a method of ``client``'s service) sent as messages of its
    stream sibling ``stream`` while a stream can be had (:class:`StreamLane`), else as
    unary calls: the answer and the errors are the unary call's either way.

    ``Request`` is the stream's envelope, whose field ``fields[0]`` holds the unary
    request; ``Response`` holds the unary answer in ``fields[1]``. ``limits.most`` 0:
    unary calls only.
    """

    def __init__(
        self,
        client: ServiceClient[Any],
        unary: str,
        stream: str,
        envelope: type[Request],
        answer: type[Response],
        fields: tuple[str, str],
        limits: StreamLimits | None = None,
    ) -> None:
        self._client = client
        self._request_field, self._answer_field = fields
        self._envelope = envelope
        self._path = client.method(unary)
        self._unary = getattr(client.stub, unary)
        limits = limits or StreamLimits()
        self._lane: StreamLane[Request, Response] | None = None
        if limits.most > 0:
            self._lane = StreamLane(client, stream, envelope, answer, limits)

    @property
    def streams_open(self) -> int:
        return 0 if self._lane is None else self._lane.open

    async def __call__(self, request: Unary, *, timeout: float | None = None) -> UnaryAnswer:
        """The unary method's answer to ``request`` (copied into an envelope)."""
        return await self.send(self._envelope(**{self._request_field: request}), timeout)

    async def send(self, envelope: Request, timeout: float | None = None) -> UnaryAnswer:
        """The unary method's answer to the request in ``envelope`` (built in place by a
        caller that makes many: no copy). ``timeout`` as the unary call takes it; the
        channel's rules apply (its default timeout, the deadline of the call being
        served). The request id is the call being served's, else the envelope's own
        ``request_id`` if set (sent as metadata if the request goes as a unary call),
        else the server's."""
        own = getattr(envelope, "request_id", "")
        if own and propagation.current() is None:
            token = propagation.bind(propagation.CallContext(own))
            try:
                return await self._send(envelope, timeout)
            finally:
                propagation.unbind(token)
        return await self._send(envelope, timeout)

    async def _send(self, envelope: Request, timeout: float | None) -> UnaryAnswer:
        client = self._client
        if self._lane is not None:
            answer = await self._lane.exchange(envelope, client.call_timeout(self._path, timeout))
            if answer is not None:
                return getattr(answer, self._answer_field)  # type: ignore[no-any-return]
        timeout, metadata = client.call_options(self._path, timeout)
        call = self._unary(
            getattr(envelope, self._request_field), timeout=timeout, metadata=metadata
        )
        return await call  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self._lane is not None:
            await self._lane.close()


async def _finish(call: Any) -> None:
    try:
        await call.done_writing()
        async with asyncio.timeout(5.0):
            while await call.read() is not grpc.aio.EOF:
                pass
    except (grpc.aio.AioRpcError, TimeoutError, grpc.aio.UsageError, asyncio.InvalidStateError):
        call.cancel()


def _stream_refused(error: grpc.aio.AioRpcError, stream: _Stream) -> bool:
    """RESOURCE_EXHAUSTED for the stream, not for its request: the server keeps no more
    streams (``STREAM_LIMIT``). Without a reason (a server older than reasons, or gRPC's
    own refusal) on a stream's first message, taken as the same. ``OVERLOADED``, a full
    queue, is the request's answer: the unary call would get it too, and turning to
    calls, which cost twice a message, would only load the server more."""
    reason = decode_error(error).reason
    return reason == STREAM_LIMIT or (reason is None and stream.used == 0)


def _stamp(envelope: Any, timeout: float | None) -> None:
    context = propagation.current()
    envelope.request_id = context.request_id if context is not None else ""
    if envelope.shared_request_ids:
        del envelope.shared_request_ids[:]
    if context is not None and context.shared_with:
        envelope.shared_request_ids.extend(context.shared_with[: propagation.MAX_SHARED])
    if timeout is None:
        envelope.ClearField("timeout")
    else:
        seconds = int(timeout)
        envelope.timeout.CopyFrom(Duration(seconds=seconds, nanos=int((timeout - seconds) * 1e9)))


def _late(path: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"no answer on the {path} stream in time",
    )
