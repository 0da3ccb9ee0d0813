"""One Redis connection that sends every read issued in the same event-loop turn together,
and optionally keeps what it read, kept current by Redis's own invalidation messages.

redis-py takes a pooled connection per command and waits for its reply before the
connection serves anyone else: ~46 µs of client CPU per MGET at eight concurrent
readers, measured here. Online reads are independent one-command requests, so they can
share one connection: commands queued during a loop turn go out in one write, and the
replies, which Redis sends in order, resolve the callers' futures first-in first-out
(~6 µs per MGET at eight readers; Redis also answers a pipeline for less CPU).

The read cache uses Redis's server-assisted client-side caching: the connection speaks
RESP3 with ``CLIENT TRACKING on``, so Redis remembers the keys it read and pushes an
``invalidate`` message on that same connection when any client changes one. Replies and
pushes arrive in the order Redis produced them, so a value is stored when its reply is
parsed and dropped when a later change is announced; nothing stale outlives the push.
What this process writes itself is dropped as soon as the write returns (``forget``),
and a read that was in flight during such a write is not stored, so a process always
reads its own writes; another process's write is seen once its push arrives (normally
well under a millisecond). Every entry also expires after ``cache_seconds`` whatever
happens (a value still being read is read again from Redis halfway, so it stays
cached without ever being older than that), and a lost connection empties the cache
(pushes may have been missed).

Only the read path uses it (plain TCP or a Unix socket); writes, scripts and scans stay
on redis-py, which keeps its pool, TLS and retries.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeAlias

import hiredis
from redis.connection import UnixDomainSocketConnection, parse_url

from mlbackend_features.stores.read_cache import ReadCache

logger = logging.getLogger("mlbackend.features")

# Redis key -> its value as MGET returned it, decoded (None: no such key).
KeyCache: TypeAlias = ReadCache[str, Any]

# A cached value read past this share of ``cache_seconds`` is read again in the
# background. Measured here (bench/features --quick, Redis, 2 s points, three alternated
# pairs), without renewal against with it: 1 x 10 at c=8 5,075-5,898 rps / p99
# 2.53-3.15 ms against 5,880-6,220 / 2.38-2.89; 100 x 10 at c=1 p99 1.13-1.31 against
# 0.71-0.80 ms; 100 x 10 at c=8 2,590-3,686 / 4.72-6.61 against 3,449-4,342 / 3.75-4.34.
# Without it, a 100-key read nearly always found one key expired and went to Redis.
RENEW_AT = 0.5
# Renewals asked for within this long go out together, in MGETs of at most
# RENEW_BATCH_KEYS keys (each reply is decoded on the event loop in one go): reads find
# their keys aging a few at a time, and one MGET per read, tried first, measured no
# better than no renewal at all.
RENEW_BATCH_SECONDS = 0.05
RENEW_BATCH_KEYS = 1_000


class RedisReadError(Exception):
    """The connection failed, timed out, or Redis answered with an error."""


class PipelinedReads:
    """Send MGET commands on one shared connection, replies matched in order.

    Opens the connection on first use (and again after a failure); a reply that takes
    longer than ``timeout`` seconds fails every waiting caller and drops the connection,
    as a dead server would otherwise hold them forever. ``cache_keys`` > 0 keeps up to
    that many values locally (see the module's notes); a server without RESP3 (Redis
    before 6) is read without it. ``decode`` turns each value MGET found into what
    :meth:`mget` returns and the cache keeps, once per value read from Redis rather
    than once per read; a ValueError it raises fails that read.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        cache_keys: int = 0,
        cache_seconds: float = 1.0,
        decode: Callable[[str], Any] | None = None,
    ) -> None:
        self._options = _parse(url)
        self._timeout = timeout
        self._decode = decode
        self.cache: KeyCache | None = (
            ReadCache(cache_keys, cache_seconds, cache_seconds * RENEW_AT)
            if cache_keys > 0
            else None
        )
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        # Renewals of cached values still being read (see ``cached``).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._renewing: set[str] = set()  # asked for, until their renewal is answered
        self._to_renew: list[str] = []  # asked for, not sent yet
        self._renew_scheduled = False
        self._renewals: set[asyncio.Task[None]] = set()
        self._renew_lock = threading.Lock()
        self._closed = False

    @staticmethod
    def supports(url: str) -> bool:
        """Whether ``url`` is plain TCP or a Unix socket (TLS stays on redis-py)."""
        connection_class = _parse(url).get("connection_class")
        return connection_class in (None, UnixDomainSocketConnection)

    async def mget(self, keys: Sequence[str]) -> list[Any]:
        cached = self.cached(keys)
        if cached is not None:
            return cached
        return await self._fetch(keys)

    async def _fetch(self, keys: Sequence[str]) -> list[Any]:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        reply = await connection.call(_pack("MGET", *keys), keys)
        if not isinstance(reply, list):
            raise RedisReadError(f"unexpected reply to MGET: {type(reply).__name__}")
        return reply

    def cached(self, keys: Sequence[str]) -> list[Any] | None:
        """MGET's answer from the cache alone, None unless every key is cached (any thread).

        A value past ``RENEW_AT`` of its life is still answered, and read again from Redis
        in the background: values read steadily stay cached instead of all expiring and
        being missed by the reads that touch them (a read misses if any of its keys has
        expired, so with 100 keys a read nearly always missed once keys aged apart)."""
        if self.cache is None:
            return None
        aging: list[str] = []
        found = self.cache.get(keys, aging)
        if found is not None and aging:
            self._renew(aging)
        return found

    def _renew(self, keys: list[str]) -> None:
        """Read ``keys`` again on the event loop (any thread): once per key, and what is
        asked for within ``RENEW_BATCH_SECONDS`` together."""
        loop = self._loop
        if loop is None or self._closed:
            return
        with self._renew_lock:
            keys = [k for k in keys if k not in self._renewing]
            if not keys:
                return
            self._renewing.update(keys)
            self._to_renew += keys
            if self._renew_scheduled:
                return
            self._renew_scheduled = True
        try:
            loop.call_soon_threadsafe(self._schedule_renewal, loop)
        except RuntimeError:  # the loop has closed
            self._start_renewal(run=False)

    def _schedule_renewal(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_later(RENEW_BATCH_SECONDS, self._start_renewal)

    def _start_renewal(self, run: bool = True) -> None:
        with self._renew_lock:
            keys, self._to_renew = self._to_renew, []
            self._renew_scheduled = False
        if not run or self._closed:
            self._renewed(keys)
            return
        for start in range(0, len(keys), RENEW_BATCH_KEYS):
            task = asyncio.ensure_future(self._renewal(keys[start : start + RENEW_BATCH_KEYS]))
            self._renewals.add(task)
            task.add_done_callback(self._renewals.discard)

    async def _renewal(self, keys: list[str]) -> None:
        try:
            if not self._closed:
                await self._fetch(keys)  # its reply refills the cache
        except RedisReadError as exc:
            # The values expire as they would have; the next read goes to Redis.
            logger.debug("redis: renewing %d cached values failed: %s", len(keys), exc)
        finally:
            self._renewed(keys)

    def _renewed(self, keys: list[str]) -> None:
        with self._renew_lock:
            self._renewing.difference_update(keys)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` from the cache: this process has just changed them."""
        if self.cache is not None:
            self.cache.drop(keys)

    async def _connect(self) -> _Connection:
        # Concurrent first callers share one connection attempt.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Connection:
        loop = self._loop = asyncio.get_running_loop()
        options = self._options

        def factory() -> _Connection:
            return _Connection(self._timeout, self.cache, self._decode)

        try:
            if "path" in options:
                _, connection = await asyncio.wait_for(
                    loop.create_unix_connection(factory, options["path"]), self._timeout
                )
            else:
                _, connection = await asyncio.wait_for(
                    loop.create_connection(
                        factory, options.get("host", "localhost"), options.get("port", 6379)
                    ),
                    self._timeout,
                )
        except (OSError, TimeoutError) as exc:
            raise RedisReadError(f"cannot connect: {exc or type(exc).__name__}") from exc
        try:
            await self._handshake(connection)
        except RedisReadError as exc:
            connection.fail(exc)
            raise
        self._connection = connection
        return connection

    async def _handshake(self, connection: _Connection) -> None:
        options = self._options
        username, password = options.get("username"), options.get("password")
        auth: tuple[str, ...] = ()
        if password is not None:
            auth = (username or "default", password)
        if self.cache is not None:
            try:
                hello = ("HELLO", "3", *(("AUTH", *auth) if auth else ()))
                await connection.call(_pack(*hello))
            except RedisReadError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                logger.warning("redis: no RESP3 (%s); online reads are not cached", exc)
                self.cache = connection.cache = None
        if self.cache is None and auth:
            _expect_ok(await connection.call(_pack("AUTH", *auth)), "AUTH")
        if options.get("db"):
            command = _pack("SELECT", str(options["db"]))
            _expect_ok(await connection.call(command), "SELECT")
        if self.cache is not None:
            command = _pack("CLIENT", "TRACKING", "on")
            _expect_ok(await connection.call(command), "CLIENT TRACKING")

    def close(self) -> None:
        self._closed = True
        for task in self._renewals:
            task.cancel()
        if self._connection is not None:
            self._connection.fail(RedisReadError("closed"))
            self._connection = None


class _Waiter(NamedTuple):
    future: asyncio.Future[Any]
    sent: float
    keys: Sequence[str] | None  # stored in the cache with the reply
    epoch: int


class _Connection(asyncio.Protocol):
    def __init__(
        self, timeout: float, cache: KeyCache | None, decode: Callable[[str], Any] | None
    ) -> None:
        self._timeout = timeout
        self.cache = cache
        self._decode = decode
        self._reader = hiredis.Reader(encoding="utf-8", errors="strict")
        self._waiting: deque[_Waiter] = deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def call(self, command: bytes, keys: Sequence[str] | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self.closed:
            future.set_exception(RedisReadError("connection closed"))
            return future
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(command)
        cache = self.cache
        epoch = cache.epoch if cache is not None else 0
        self._waiting.append(_Waiter(future, time.monotonic(), keys, epoch))
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout, self._check_timeout)
        return future

    def _flush(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if isinstance(reply, hiredis.PushNotification):
                self._pushed(reply)
                continue
            if not self._waiting:
                self.fail(RedisReadError("reply without a request"))
                return
            waiter = self._waiting.popleft()
            if isinstance(reply, hiredis.ReplyError):
                if not waiter.future.done():
                    waiter.future.set_exception(RedisReadError(str(reply)))
                continue
            decode = self._decode
            if decode is not None and waiter.keys is not None and isinstance(reply, list):
                try:
                    reply = [None if value is None else decode(value) for value in reply]
                except ValueError as exc:
                    if not waiter.future.done():
                        waiter.future.set_exception(RedisReadError(f"unreadable value: {exc}"))
                    continue
            cache = self.cache
            # Stored now, before any later push is read: a change announced after this
            # reply then removes it again.
            if cache is not None and waiter.keys is not None and isinstance(reply, list):
                cache.fill(waiter.keys, reply, waiter.epoch)
            if not waiter.future.done():  # else the caller was cancelled: dropped
                waiter.future.set_result(reply)

    def _pushed(self, message: list[Any]) -> None:
        if self.cache is None or not message or message[0] != "invalidate":
            return
        keys = message[1] if len(message) > 1 else None
        if keys is None:  # FLUSHDB / FLUSHALL: everything may have changed
            self.cache.clear()
        else:
            self.cache.invalidate(keys)

    def _check_timeout(self) -> None:
        self._watchdog = None
        if not self._waiting or self.closed:
            return
        waited = time.monotonic() - self._waiting[0].sent
        if waited >= self._timeout:
            self.fail(RedisReadError(f"no reply within {self._timeout:g} s"))
            return
        self._watchdog = self._loop.call_later(self._timeout - waited, self._check_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisReadError(f"connection lost: {exc}" if exc else "connection closed"))

    def fail(self, error: RedisReadError) -> None:
        if self.cache is not None and not self.closed:
            self.cache.clear()  # invalidations may have been missed
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            future = self._waiting.popleft().future
            if not future.done():
                future.set_exception(error)
        self._outgoing.clear()


def _pack(*args: str) -> bytes:
    """One command in RESP (hiredis writes it)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub says 1-tuple
    return packed


def _parse(url: str) -> dict[str, Any]:
    """redis-py's reading of a ``redis://`` or ``unix://`` URL (host, port, db, auth)."""
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return options


def _expect_ok(reply: object, what: str) -> None:
    if reply != "OK":
        raise RedisReadError(f"{what} answered {reply!r}")
