"""The thread-pool server's unary requests received as calls are queued
(``mlbackend_runtime.eager``), on a real ``grpc.server`` over loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import pytest

from mlbackend_runtime import eager
from mlbackend_runtime.eager import EagerRequestPool

METHOD = "/test.Echo/Echo"


@dataclass
class _Echo:
    """A unary method answering its request's bytes reversed; it records each request
    it deserializes and each it handles (and on which thread), and waits for
    ``release`` before answering, except a request that starts with ``now``."""

    release: threading.Event = field(default_factory=threading.Event)
    parsed: list[bytes] = field(default_factory=list)
    handled: list[bytes] = field(default_factory=list)
    threads: dict[bytes, str] = field(default_factory=dict)

    def parse(self, data: bytes) -> bytes:
        self.parsed.append(data)
        return data

    def handle(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.handled.append(request)
        self.threads[request] = threading.current_thread().name
        if not request.startswith(b"now"):
            assert self.release.wait(10)
        return request[::-1]


@contextmanager
def _server(pool: ThreadPoolExecutor, echo: _Echo) -> Iterator[grpc.Channel]:
    handler = grpc.unary_unary_rpc_method_handler(echo.handle, echo.parse)
    server = grpc.server(pool)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", {"Echo": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        echo.release.set()
        server.stop(None)
        pool.shutdown()


def _now(request: bytes) -> bool:
    return request.startswith(b"now")


def _refuses(request: bytes) -> bool:
    raise ValueError("not this one")


Pools = Callable[[], ThreadPoolExecutor]
BOTH: list[Pools] = [
    lambda: ThreadPoolExecutor(1, "pool"),
    lambda: EagerRequestPool(1, "pool"),
    lambda: EagerRequestPool(1, "pool", at_once=_now),
]


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_the_installed_grpcio_has_the_internals_the_pool_relies_on() -> None:
    # Fails after a grpcio upgrade that changed them: the pool would then fall back to
    # receiving requests on its threads, correct but slower.
    assert eager.SUPPORTED


@pytest.mark.parametrize(("pool", "eagerly"), [(BOTH[0], False), (BOTH[1], True), (BOTH[2], True)])
def test_queued_calls_have_their_messages_before_a_thread_takes_them(
    pool: Pools, eagerly: bool
) -> None:
    echo = _Echo()
    with _server(pool(), echo) as channel:
        call = channel.unary_unary(METHOD)
        futures = [call.future(bytes([i, 0, 255])) for i in range(6)]
        _until(lambda: len(echo.handled) == 1)  # the pool's one thread is busy
        time.sleep(0.2)
        # Stock gRPC starts receiving a call's message once a pool thread takes the
        # call; the eager pool has received the five queued ones already.
        assert len(echo.parsed) == (6 if eagerly else 1)
        echo.release.set()
        assert [f.result(timeout=10) for f in futures] == [bytes([255, 0, i]) for i in range(6)]
        assert sorted(echo.handled) == [bytes([i, 0, 255]) for i in range(6)]


@pytest.mark.parametrize("pool", BOTH)
def test_a_call_whose_deadline_passes_in_the_queue_ends_and_the_pool_goes_on(pool: Pools) -> None:
    echo = _Echo()
    with _server(pool(), echo) as channel:
        call = channel.unary_unary(METHOD)
        first = call.future(b"first")
        _until(lambda: len(echo.handled) == 1)
        with pytest.raises(grpc.RpcError) as raised:
            call(b"late", timeout=0.3)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        echo.release.set()
        assert first.result(timeout=10) == b"tsrif"
        assert call(b"next", timeout=10) == b"txen"
        # Whether the late call still runs depends on whether gRPC has seen its end
        # by the time a thread takes it, with any pool.
        assert echo.handled in ([b"first", b"next"], [b"first", b"late", b"next"])


@pytest.mark.parametrize("pool", BOTH)
def test_a_unary_call_without_its_request_message_is_refused(pool: Pools) -> None:
    echo = _Echo()
    echo.release.set()
    with _server(pool(), echo) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.stream_unary(METHOD)(iter(()), timeout=10)
        assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "requires exactly one request message" in (raised.value.details() or "")
        assert channel.unary_unary(METHOD)(b"ab", timeout=10) == b"ba"
        assert echo.handled == [b"ab"]


def test_with_other_internals_the_pool_falls_back_to_stock_receiving(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(eager, "SUPPORTED", False)
    monkeypatch.setattr(EagerRequestPool, "_warned", False)
    echo = _Echo()
    with _server(EagerRequestPool(1, "pool"), echo) as channel:
        call = channel.unary_unary(METHOD)
        futures = [call.future(bytes([i])) for i in range(3)]
        _until(lambda: len(echo.handled) == 1)
        time.sleep(0.2)
        assert len(echo.parsed) == 1
        echo.release.set()
        assert sorted(f.result(timeout=10) for f in futures) == [bytes([i]) for i in range(3)]
    assert "server internals differ" in caplog.text


def test_a_call_its_message_lets_run_at_once_is_answered_while_the_pool_is_busy() -> None:
    echo = _Echo()
    with _server(EagerRequestPool(1, "pool", at_once=_now), echo) as channel:
        call = channel.unary_unary(METHOD)
        waiting = [call.future(b"wait%d" % i) for i in range(3)]
        _until(lambda: len(echo.handled) == 1)  # the pool's one thread is busy
        # Answered on gRPC's polling thread, with the pool's thread still taken.
        assert call(b"now-a", timeout=10) == b"a-won"
        assert call(b"now-b", timeout=10) == b"b-won"
        assert not echo.threads[b"now-a"].startswith("pool")
        assert not any(f.done() for f in waiting)
        echo.release.set()
        answers = sorted(f.result(timeout=10) for f in waiting)
        assert answers == [b"%dtiaw" % i for i in range(3)]
        assert all(echo.threads[b"wait%d" % i].startswith("pool") for i in range(3))


def test_a_check_that_raises_leaves_the_call_to_the_pool() -> None:
    echo = _Echo()
    echo.release.set()
    with _server(EagerRequestPool(1, "pool", at_once=_refuses), echo) as channel:
        assert channel.unary_unary(METHOD)(b"now-x", timeout=10) == b"x-won"
        assert echo.threads[b"now-x"].startswith("pool")
