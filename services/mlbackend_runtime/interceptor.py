"""The one server interceptor every mlbackend service runs.

For each RPC (health and reflection excepted) it binds the request id and the
caller's deadline for downstream calls, authenticates and authorizes the caller,
maps domain errors to status codes with details, and records metrics. Handlers
therefore contain no try/except for these concerns. It wraps each handler as the
service registers it (:class:`Registrar`), not as a ``grpc`` server interceptor.

:class:`CallInterceptor` is its ``grpc.aio`` face; :class:`ThreadCallInterceptor` the
same behaviour for a thread-pool ``grpc.server`` (serving's front). Both share every
rule below (``_Interception``); only awaiting and aborting differ.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import CoroutineType
from typing import Any, NoReturn, TypeAlias, cast

import grpc

from mlbackend_clients import propagation
from mlbackend_runtime import errors, status
from mlbackend_runtime.auth import ANONYMOUS, OPEN_SERVICES, Authenticator, Principal
from mlbackend_runtime.metrics import RpcMetrics

logger = logging.getLogger("mlbackend.rpc")

_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "mlbackend_principal", default=ANONYMOUS
)


def caller() -> Principal:
    """Who made the RPC being handled (``anonymous`` admin when auth is off)."""
    return _principal.get()


# The interception and call of the RPC being handled, for the messages of a stream
# that carries a unary method's calls (``mlbackend_runtime.streamed``).
_streamed: contextvars.ContextVar[tuple[_Interception, _Call] | None] = contextvars.ContextVar(
    "mlbackend_streamed_call", default=None
)


def authorize_message() -> None:
    """Authorize one message of such a stream as a call of its own would be: with the
    token the stream was opened with, against the tokens as they are now (the token
    file is reloaded within seconds of an edit). So a token revoked, or a role lowered,
    while a stream is open stops working on it too; raises as the interceptor's check
    would (UNAUTHENTICATED, PERMISSION_DENIED). With the tokens unchanged since the
    last check this costs a counter's comparison."""
    bound = _streamed.get()
    if bound is None:
        return
    interception, call = bound
    auth = interception._auth
    generation = auth.generation()
    if generation != call.auth_generation:
        _principal.set(auth.authorize(_path(call), call.token))
        call.auth_generation = generation


def observe_message(
    method: str,
    code: grpc.StatusCode,
    seconds: float,
    request_id: str,
    shared_with: tuple[str, ...] = (),
) -> None:
    """Count one message of such a stream as one call of ``method``, so the method's
    request counts and latency cover its calls whichever way they came. A message that
    fails ends its stream with its status: the stream's log line and request-id trailer
    then name the message's request id and the requests it is shared with."""
    bound = _streamed.get()
    if bound is not None:
        interception, call = bound
        interception._metrics.observe(call.service, method, code.name, seconds)
        if code is not grpc.StatusCode.OK:
            call.request_id = request_id
            call.shared_with = shared_with


@dataclass
class _Call:
    service: str
    method: str
    request_id: str
    started: float
    code: grpc.StatusCode = grpc.StatusCode.OK
    denied: errors.DomainError | None = None
    shared_with: tuple[str, ...] = ()  # the other requests a coalesced call serves
    token: str | None = None  # the caller's ``authorization``, for a stream's messages
    auth_generation: int = 0  # of the tokens it was authorized under


# Wrapped handlers kept per method path; more methods than this are wrapped per call.
_MAX_CACHED_METHODS = 1024

# Generic only in the type stubs, hence the strings.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
BlockingContext: TypeAlias = grpc.ServicerContext
AnyContext: TypeAlias = "Context | BlockingContext"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class _Interception:
    """What every RPC goes through, whatever the server's concurrency model."""

    def __init__(self, authenticator: Authenticator, metrics: RpcMetrics) -> None:
        self._auth = authenticator
        self._metrics = metrics
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def _intercepted(self, path: str, handler: Handler) -> Handler:
        # The wrapped handler only depends on the method: build it once, not per call
        # (the per-call state comes from the context inside ``begin``).
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        service, _, method = path.lstrip("/").partition("/")
        wrapped = handler
        if service not in OPEN_SERVICES:
            begin = functools.partial(self._begin, path, service, method)
            wrapped = self._wrap(handler, begin)
        if len(self._wrapped) < _MAX_CACHED_METHODS:
            self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler, begin: Begin) -> Handler:
        raise NotImplementedError

    def _begin(self, path: str, service: str, method: str, context: AnyContext) -> _Call:
        metadata = context.invocation_metadata() or ()
        call = _Call(service, method, propagation.request_id_from(metadata), time.perf_counter())
        call.shared_with = propagation.shared_request_ids(metadata)
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        # Each RPC runs in its own task (aio) or its own context (threads), so these
        # bindings end with the call.
        propagation.bind(propagation.CallContext(call.request_id, deadline, call.shared_with))
        self._metrics.started()
        _streamed.set((self, call))
        authorization = next((v for k, v in metadata if k == "authorization"), None)
        try:
            call.token = authorization if isinstance(authorization, str) else None
            _principal.set(self._auth.authorize(path, call.token))
            call.auth_generation = self._auth.generation()
        except errors.DomainError as exc:
            call.denied = exc  # raised by the wrapper, so it is counted and mapped like any error
        return call

    def _status(self, call: _Call, exc: BaseException) -> status.WireStatus:
        """The status to send for ``exc``, recorded on ``call``."""
        if isinstance(exc, errors.DomainError):
            wire = status.from_domain_error(exc)
        elif isinstance(exc, grpc.aio.AioRpcError):
            wire = status.from_upstream_error(exc, dependency=None)
        elif isinstance(exc, NotImplementedError):
            wire = status.from_domain_error(
                errors.Unimplemented(f"{_path(call)} is not implemented")
            )
        else:
            logger.exception("unhandled error in %s (request id %s)", _path(call), call.request_id)
            wire = status.internal(f"internal error (request id {call.request_id})")
        call.code = wire.code
        return wire

    def _trailer(self, call: _Call, wire: status.WireStatus) -> tuple[tuple[str, str | bytes], ...]:
        return (*wire.trailing_metadata, (propagation.REQUEST_ID_KEY, call.request_id))

    def _end(self, call: _Call, context: AnyContext) -> None:
        self._metrics.ended()
        code = call.code
        if code is grpc.StatusCode.OK:
            code = _code_of(context) or grpc.StatusCode.OK
            context.set_trailing_metadata(((propagation.REQUEST_ID_KEY, call.request_id),))
        elapsed = time.perf_counter() - call.started
        self._metrics.observe(call.service, call.method, code.name, elapsed)
        if code is not grpc.StatusCode.OK:
            level = logging.ERROR if code is grpc.StatusCode.INTERNAL else logging.INFO
            # Logged under the call's request id: a stream's failing message names its own.
            token = propagation.bind(
                propagation.CallContext(call.request_id, None, call.shared_with)
            )
            try:
                logger.log(level, "%s -> %s in %.1f ms%s", _path(call), code.name,
                           elapsed * 1e3, _shared(call))  # fmt: skip
            finally:
                propagation.unbind(token)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s -> OK in %.1f ms%s", _path(call), elapsed * 1e3, _shared(call))


class Registrar:
    """What a service adds its handlers to: it passes each to the server wrapped by the
    interception (health and reflection, added by the runtime itself, are not).

    Wrapping at registration rather than through a ``grpc`` server interceptor spares
    every call gRPC's interceptor pipeline: on ``grpc.aio`` a chain of coroutines per
    call, on the thread-pool server a chain of closures."""

    def __init__(self, server: grpc.Server | grpc.aio.Server, interception: _Interception) -> None:
        self._server = server
        self._interception = interception

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_Intercepted(handler, self._interception) for handler in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        intercepted = self._interception._intercepted
        self._server.add_registered_method_handlers(
            service, {m: intercepted(f"/{service}/{m}", h) for m, h in handlers.items()}
        )


class _Intercepted(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, interception: _Interception) -> None:
        self._inner = inner
        self._interception = interception

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._interception._intercepted(handler_call_details.method, handler)


class CallInterceptor(_Interception):
    """The interception for a ``grpc.aio`` server: behaviours are coroutines (or async
    generators) run on the event loop, each call in its own task.

    Beyond ``max_calls`` calls in progress (streams included; health and reflection not
    counted) a new call is refused with RESOURCE_EXHAUSTED at once, as the thread-pool
    server's own limit does. ``grpc.aio``'s limit would instead stop taking calls,
    leaving them queued in gRPC's core until their deadlines."""

    def __init__(
        self, authenticator: Authenticator, metrics: RpcMetrics, max_calls: int | None = None
    ) -> None:
        super().__init__(authenticator, metrics)
        self._max_calls = max_calls
        self._calls = 0  # only touched on the event loop's thread

    def _wrap(self, handler: Handler, begin: Begin) -> Handler:
        if self._max_calls is None:
            return _wrap(handler, begin, self._fail, self._end)
        return _wrap(handler, functools.partial(self._admit, begin), self._fail, self._leave)

    def _admit(self, begin: Begin, context: AnyContext) -> _Call:
        call = begin(context)
        self._calls += 1
        if self._calls > cast(int, self._max_calls) and call.denied is None:
            call.denied = errors.ResourceExhausted(
                f"server busy: {self._max_calls} calls already in progress; retry with backoff"
            )
        return call

    def _leave(self, call: _Call, context: AnyContext) -> None:
        self._calls -= 1
        self._end(call, context)

    async def _fail(self, call: _Call, exc: BaseException, context: Context) -> None:
        """Record and send the status for ``exc``; always ends by raising."""
        if isinstance(exc, grpc.aio.AbortError):
            # The handler aborted itself with a status of its choosing.
            call.code = context.code() or grpc.StatusCode.UNKNOWN
            raise exc
        if isinstance(exc, asyncio.CancelledError):
            call.code = grpc.StatusCode.CANCELLED
            raise exc
        wire = self._status(call, exc)
        await context.abort(wire.code, wire.message, self._trailer(call, wire))


class ThreadCallInterceptor(_Interception):
    """The same interception for a thread-pool ``grpc.server``: handlers are plain
    functions run on its threads, each call in a fresh ``contextvars`` context."""

    def _wrap(self, handler: Handler, begin: Begin) -> Handler:
        return _wrap_blocking(handler, begin, self._fail, self._end)

    def _fail(self, call: _Call, exc: BaseException, context: BlockingContext) -> NoReturn:
        aborted = _code_of(context)
        if aborted is not None and aborted is not grpc.StatusCode.OK:
            # The handler aborted itself (``context.abort`` raised) with its own status.
            call.code = aborted
            raise exc
        if not context.is_active():
            # The call already ended (the client left, or its deadline passed) and work
            # awaited for it was cancelled: nobody reads a status, and aborting (rather
            # than raising) keeps gRPC from logging the cancellation as a failure.
            call.code = grpc.StatusCode.CANCELLED
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before its answer")
        wire = self._status(call, exc)
        context.set_trailing_metadata(self._trailer(call, wire))
        context.abort(wire.code, wire.message)
        raise AssertionError("context.abort returned")  # pragma: no cover


def _code_of(context: AnyContext) -> grpc.StatusCode | None:
    # Both contexts have ``code()``; the sync one's type stubs lack it.
    code: grpc.StatusCode | None = context.code()  # type: ignore[union-attr]
    return code


def _path(call: _Call) -> str:
    return f"/{call.service}/{call.method}"


def _shared(call: _Call) -> str:
    if not call.shared_with:
        return ""
    return f" (shared with requests {', '.join(call.shared_with)})"


Begin = Callable[[AnyContext], _Call]
Fail = Callable[[_Call, BaseException, Context], Awaitable[None]]
End = Callable[[_Call, AnyContext], None]
BlockingFail = Callable[[_Call, BaseException, BlockingContext], NoReturn]


HANDLER_FACTORIES = {  # by (request streaming, response streaming)
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request message that failed to parse.

    gRPC would answer INTERNAL for a deserializer exception; bad input is the caller's
    fault, so the wrapper turns this into INVALID_ARGUMENT instead.
    """

    reason: str

    def error(self) -> errors.InvalidInput:
        return errors.InvalidInput.field("request", f"not a valid message: {self.reason}")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(str(exc) or type(exc).__name__)

    return deserialize


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error()
        yield request


def _checked(request: Any, streaming: bool) -> Any:
    if streaming:
        return _checked_stream(request)
    if isinstance(request, _Undecodable):
        raise request.error()
    return request


def _wrap(handler: Handler, begin: Begin, fail: Fail, end: End) -> Handler:
    """The same handler with ``begin``/``fail``/``end`` around its behaviour.

    Behaviours may be coroutines, async generators, plain functions (the generated
    base servicer raises ``NotImplementedError`` synchronously) or ``context.write``
    style coroutines; all of them end up in ``fail`` on error.
    """
    request_streaming = bool(handler.request_streaming)
    inner: Callable[..., Any] = (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream  # type: ignore[assignment]
    )

    async def unary_response(request: Any, context: Context) -> Any:
        call = begin(context)
        try:
            if call.denied is not None:
                raise call.denied
            result = inner(_checked(request, request_streaming), context)
            # A coroutine is by far the common case; the ABC check costs more.
            if type(result) is CoroutineType or inspect.isawaitable(result):
                return await result
            return result
        except BaseException as exc:
            await fail(call, exc, context)
        finally:
            end(call, context)

    async def streaming_response(request: Any, context: Context) -> AsyncIterator[Any]:
        call = begin(context)
        try:
            if call.denied is not None:
                raise call.denied
            result = inner(_checked(request, request_streaming), context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif inspect.isawaitable(result):
                await result
            elif result is not None:
                for item in result:
                    yield item
        except GeneratorExit:
            call.code = grpc.StatusCode.CANCELLED  # the stream was closed before its end
            raise
        except BaseException as exc:
            await fail(call, exc, context)
        finally:
            end(call, context)

    response_streaming = bool(handler.response_streaming)
    factory = HANDLER_FACTORIES[(request_streaming, response_streaming)]
    behaviour = streaming_response if response_streaming else unary_response
    return factory(behaviour, _tolerant(handler.request_deserializer), handler.response_serializer)


def _wrap_blocking(handler: Handler, begin: Begin, fail: BlockingFail, end: End) -> Handler:
    """:func:`_wrap` for a thread-pool server: behaviours are plain functions (or
    generators for streamed responses). Each call already runs in a ``contextvars``
    context of its own (gRPC's ``_RPCState.context``, streamed bodies included), so what
    ``begin`` binds ends with the call although pool threads are reused."""
    request_streaming = bool(handler.request_streaming)
    inner: Callable[..., Any] = (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream  # type: ignore[assignment]
    )

    def unary_response(request: Any, context: BlockingContext) -> Any:
        call = begin(context)
        try:
            if call.denied is not None:
                raise call.denied
            return inner(_checked_blocking(request, request_streaming), context)
        except BaseException as exc:
            fail(call, exc, context)
        finally:
            end(call, context)

    def streaming_response(request: Any, context: BlockingContext) -> Iterator[Any]:
        call = begin(context)
        try:
            if call.denied is not None:
                raise call.denied
            yield from inner(_checked_blocking(request, request_streaming), context)
        except GeneratorExit:
            call.code = grpc.StatusCode.CANCELLED  # gRPC dropped the stream before its end
            raise
        except BaseException as exc:
            fail(call, exc, context)
        finally:
            end(call, context)

    # A method may name its own pool (gRPC's ``experimental_thread_pool``).
    pool = getattr(inner, "experimental_thread_pool", None)
    if pool is not None:
        setattr(unary_response, "experimental_thread_pool", pool)  # noqa: B010
        setattr(streaming_response, "experimental_thread_pool", pool)  # noqa: B010
    response_streaming = bool(handler.response_streaming)
    factory = HANDLER_FACTORIES[(request_streaming, response_streaming)]
    behaviour = streaming_response if response_streaming else unary_response
    return factory(behaviour, _tolerant(handler.request_deserializer), handler.response_serializer)


def _checked_blocking(request: Any, streaming: bool) -> Any:
    if streaming:
        return (_checked(r, False) for r in request)
    return _checked(request, False)
