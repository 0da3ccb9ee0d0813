"""A unary call's request message received when the call is queued, not when it runs.

gRPC's thread-pool server hands each new call to a pool as a task whose first step,
on the pool thread, starts receiving the request message and then sleeps until gRPC's
``_serve`` thread, the one polling the completion queue, wakes it with the message.
On a small pool under load that wait is paid in turn by every queued call: a thread
takes a call, starts its receive, sleeps, is woken, runs it, takes the next. Measured
on serving's two prediction threads at c=32 (single-row ModelInfer, 5 s rounds
alternated with the stock pool, 4 rounds): 2,836 → 3,509 rps (HistGradientBoosting)
and 2,690 → 2,927 (RandomForest), server CPU per request 356 → 285 µs, context
switches per request ~8 → ~5.5.

:class:`EagerRequestPool` starts that receive from ``submit`` instead, which gRPC calls
on its ``_serve`` thread as the call arrives; the task on the pool then finds the
message waiting (or waits for it as before). Everything else is gRPC's own code path:
the same receive callback stores the message, cancellation and deadlines end the call
as they did, and the response is sent as before.

With ``at_once`` the pool goes one step further for calls that take microseconds and
never wait: such a call runs on the ``_serve`` thread itself as its message arrives,
never queued (serving's single-row predictions to a light model: at c=1, 548 → 385 µs
of server CPU per request and 16 → 5 context switches; see ``bench/serving/README.md``).

This reaches into ``grpc._server``'s private functions, as they are in grpcio 1.85
(``pyproject.toml`` asks for 1.85.1 or later). :data:`SUPPORTED` says whether they are
as expected; when they are not, the pool submits calls unchanged and logs once at first
use, and ``tests/unit/test_eager.py`` fails, so an upgrade cannot drop the gain
silently.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from grpc import _server as _grpc_server
from grpc._cython import cygrpc as _cygrpc  # type: ignore[attr-defined]

logger = logging.getLogger("mlbackend.rpc")

# What this module relies on in ``grpc._server``: function parameters, and names.
_EXPECTED_PARAMETERS = {
    "_unary_response_in_pool": [
        "rpc_event", "state", "behavior", "argument_thunk",
        "request_deserializer", "response_serializer",
    ],
    "_receive_message": ["state", "call", "request_deserializer"],
    "_abort": ["state", "call", "code", "details"],
}  # fmt: skip
_EXPECTED_NAMES = ("_RECEIVE_MESSAGE_TOKEN", "_EMPTY_FLAGS", "_CLOSED", "_CANCELLED")


def _supported() -> bool:
    if not hasattr(_cygrpc, "ReceiveMessageOperation"):
        return False
    for name, parameters in _EXPECTED_PARAMETERS.items():
        function = getattr(_grpc_server, name, None)
        if function is None or list(inspect.signature(function).parameters) != parameters:
            return False
    return all(hasattr(_grpc_server, name) for name in _EXPECTED_NAMES)


SUPPORTED = _supported()
"""Whether the installed grpcio's server internals are the ones this module expects."""

# The task gRPC submits for a unary-request call (None if this grpcio has none).
_UNARY_IN_POOL = getattr(_grpc_server, "_unary_response_in_pool", None)


class EagerRequestPool(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` for a thread-pool ``grpc.server`` (its default pool, or a
    method's ``experimental_thread_pool``) that starts receiving each unary-request
    call's message as the call is submitted. Anything else it runs unchanged.

    With ``at_once``, a unary call is queued only once its message is in, and a call
    whose message ``at_once`` accepts is not queued at all: it runs right there, on
    gRPC's polling thread, as the message arrives. ``at_once`` must accept only
    messages whose handling never waits (no lock held for long, no I/O, no queue) and
    takes microseconds, since no other call's events are handled meanwhile; it must be
    cheap, and it must not raise (an error counts as refusal)."""

    _warned = False

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[[], object] | None = None,
        *,
        at_once: Callable[[Any], bool] | None = None,
    ) -> None:
        super().__init__(max_workers, thread_name_prefix, initializer)
        self._at_once = at_once

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not (args and args[0] is _UNARY_IN_POOL):
            return super().submit(fn, *args, **kwargs)
        if not SUPPORTED:
            if not EagerRequestPool._warned:
                EagerRequestPool._warned = True
                logger.warning(
                    "this grpcio's server internals differ from what mlbackend_runtime.eager"
                    " expects: unary requests are received on the pool threads (slower)"
                )
            return super().submit(fn, *args, **kwargs)
        if self._at_once is None:
            return super().submit(fn, *_received_early(args, None))
        call = _Deferred(fn, self._at_once, self._queue)
        call.args = _received_early(args, call.arrived)
        return call.future

    def _queue(self, fn: Callable[[], object]) -> None:
        super().submit(fn)


class _Deferred:
    """A unary call whose message is on its way; run where its message decides."""

    def __init__(
        self,
        fn: Callable[..., Any],
        at_once: Callable[[Any], bool],
        queue: Callable[[Callable[[], object]], None],
    ) -> None:
        self.fn = fn
        self.at_once = at_once
        self.queue = queue
        self.args: tuple[Any, ...] = ()
        self.future: Future[Any] = Future()  # gRPC counts the call as active until done

    def arrived(self, request: Any) -> None:
        """On gRPC's polling thread, the call's message (None: none came) just stored."""
        at_once = request is None  # the call ends at once: no message, or cancelled
        if not at_once:
            try:
                at_once = bool(self.at_once(request))
            except Exception:  # a refusal: the pool then runs the call
                at_once = False
        if not at_once:
            try:
                self.queue(self.run)
                return
            except RuntimeError:  # the pool is shut down: the server is stopping
                pass
        self.run()

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # kept in the future, as the pool would
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


def _received_early(
    args: tuple[Any, ...], arrived: Callable[[Any], None] | None
) -> tuple[Any, ...]:
    """``_unary_response_in_pool``'s arguments, its request thunk replaced by one whose
    receive starts now; ``arrived`` is called with the message (None if none came) once
    it is stored. gRPC calls ``submit`` holding the call's ``state.condition`` (a
    reentrant lock), as its own thunk holds it to start the receive."""
    in_pool, rpc_event, state, behavior, _thunk, deserializer, serializer = args
    server = _grpc_server
    call = rpc_event.call
    receive = server._receive_message(state, call, deserializer)
    if arrived is not None:
        stored = receive

        def receive(event: Any) -> Any:
            outcome = stored(event)
            # Stored under the call's condition on this thread; only the thunk below,
            # which runs after ``arrived`` hands the call on, takes it.
            arrived(state.request)
            return outcome

    call.start_server_batch((_cygrpc.ReceiveMessageOperation(server._EMPTY_FLAGS),), receive)
    state.due.add(server._RECEIVE_MESSAGE_TOKEN)
    method = rpc_event.call_details.method
    name = method.decode(errors="replace") if isinstance(method, bytes) else str(method)

    def request() -> Any:
        # gRPC's own thunk, minus starting the receive: None ends the call unanswered.
        with state.condition:
            while True:
                if state.client is server._CANCELLED or state.statused:
                    return None
                if state.request is not None:
                    message = state.request
                    state.request = None
                    return message
                if state.client is server._CLOSED:
                    details = f'"{name}" requires exactly one request message.'.encode()
                    server._abort(state, call, _cygrpc.StatusCode.unimplemented, details)
                    return None
                state.condition.wait()

    return (in_pool, rpc_event, state, behavior, request, deserializer, serializer)
