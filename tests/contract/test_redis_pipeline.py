"""The shared read connection of the Redis online store, against a real redis-server:
concurrent reads share one connection and each caller gets its own reply; failures,
silence and cancellation never hand a caller someone else's answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis as redis_sync

from mlbackend_features.core.model import Record
from mlbackend_features.stores.online_redis import RedisOnlineStore
from mlbackend_features.stores.redis_pipeline import PipelinedReads, RedisReadError
from tests.contract.redis_server import redis_server


@pytest.fixture
def url() -> Iterator[str]:
    with redis_server() as server_url:
        yield server_url


def _fill(url: str, count: int) -> None:
    client = redis_sync.Redis.from_url(url)
    client.mset({f"k{i}": f"value {i}" for i in range(count)})
    client.close()


def _clients(url: str) -> int:
    client = redis_sync.Redis.from_url(url)
    listed = client.client_list()
    client.close()
    return len(listed) - 1  # not counting the one asking


async def test_concurrent_reads_share_one_connection_and_get_their_own_replies(
    url: str,
) -> None:
    _fill(url, 500)
    reads = PipelinedReads(url)
    keys = [[f"k{i}", "absent", f"k{(i * 7) % 500}"] for i in range(500)]
    replies = await asyncio.gather(*(reads.mget(k) for k in keys))
    for i, reply in enumerate(replies):
        assert reply == [f"value {i}", None, f"value {(i * 7) % 500}"]
    assert _clients(url) == 1
    # A large read (10,000 keys) comes back whole and in order.
    big = [f"k{i % 500}" for i in range(10_000)]
    assert await reads.mget(big) == [f"value {i % 500}" for i in range(10_000)]
    reads.close()


async def test_a_cancelled_caller_does_not_shift_the_replies(url: str) -> None:
    _fill(url, 3)
    reads = PipelinedReads(url)
    await reads.mget(["k0"])  # connected
    first = asyncio.ensure_future(reads.mget(["k0"]))
    second = asyncio.ensure_future(reads.mget(["k1"]))
    third = asyncio.ensure_future(reads.mget(["k2"]))
    await asyncio.sleep(0)  # queued and sent
    second.cancel()
    assert await first == ["value 0"]
    assert await third == ["value 2"]
    assert await reads.mget(["k1"]) == ["value 1"]
    reads.close()


async def test_password_and_database_from_the_url(url: str) -> None:
    admin = redis_sync.Redis.from_url(url)
    admin.config_set("requirepass", "s3cret")
    base = url.rsplit("/", 1)[0].replace("redis://", "redis://:s3cret@")
    authed = redis_sync.Redis.from_url(f"{base}/3")
    authed.set("k", "in db 3")
    reads = PipelinedReads(f"{base}/3")
    assert await reads.mget(["k"]) == ["in db 3"]
    reads.close()
    with pytest.raises(RedisReadError, match="WRONGPASS"):
        await PipelinedReads(url.replace("redis://", "redis://:wrong@")).mget(["k"])
    with pytest.raises(RedisReadError, match="NOAUTH"):
        await PipelinedReads(url).mget(["k"])
    authed.close()
    admin.close()


async def test_an_error_reply_fails_that_caller_only(url: str) -> None:
    reads = PipelinedReads(url.rsplit("/", 1)[0] + "/99")  # no such database
    with pytest.raises(RedisReadError, match="DB index"):
        await reads.mget(["k"])


async def test_values_are_decoded_once_and_kept_decoded(url: str) -> None:
    _fill(url, 2)
    seen: list[str] = []

    def decode(value: str) -> tuple[str, int]:
        seen.append(value)
        word, number = value.split()
        return word, int(number)

    reads = PipelinedReads(url, cache_keys=100, cache_seconds=60, decode=decode)
    assert await reads.mget(["k0", "absent", "k1"]) == [("value", 0), None, ("value", 1)]
    assert reads.cached(["k1", "k0"]) == [("value", 1), ("value", 0)]
    assert await reads.mget(["k1"]) == [("value", 1)]
    assert seen == ["value 0", "value 1"]  # the cached ones were not decoded again
    # A value the decoder refuses fails that read only, and is not kept.
    writer = redis_sync.Redis.from_url(url)
    writer.set("odd", "no number")
    writer.close()
    with pytest.raises(RedisReadError, match="unreadable value"):
        await reads.mget(["k0", "odd"])
    assert reads.cached(["odd"]) is None
    assert await reads.mget(["k0"]) == [("value", 0)]
    reads.close()


async def test_a_server_gone_fails_fast_and_the_next_read_reconnects() -> None:
    with redis_server() as url:
        _fill(url, 1)
        reads = PipelinedReads(url)
        assert await reads.mget(["k0"]) == ["value 0"]
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    # The server is stopped: the open connection and new attempts both fail.
    with pytest.raises(RedisReadError):
        await asyncio.wait_for(reads.mget(["k0"]), 5)
    with pytest.raises(RedisReadError, match="cannot connect"):
        await asyncio.wait_for(reads.mget(["k0"]), 5)
    assert port > 0
    reads.close()


async def test_a_silent_server_times_out_every_waiting_caller() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read(1 << 16)  # read the commands, never answer

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reads = PipelinedReads(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(
        *(reads.mget([f"k{i}"]) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RedisReadError) and "no reply" in str(r) for r in results)
    assert 0.25 <= loop.time() - started < 3
    reads.close()
    for writer in accepted:
        writer.close()
    server.close()
    await server.wait_closed()


def test_tls_urls_stay_on_redis_py() -> None:
    assert PipelinedReads.supports("redis://127.0.0.1:6379/0")
    assert PipelinedReads.supports("unix:///tmp/redis.sock?db=1")
    assert not PipelinedReads.supports("rediss://127.0.0.1:6380/0")


# --- the read cache (client-side caching with Redis's invalidation messages) -------------


def _mget_calls(url: str) -> int:
    client = redis_sync.Redis.from_url(url)
    stats = client.info("commandstats").get("cmdstat_mget", {"calls": 0})
    client.close()
    return int(stats["calls"])


async def _eventually(reads: PipelinedReads, keys: list[str], want: list[str | None]) -> None:
    """The cache is told of a change by a push message: wait (bounded) for it."""
    deadline = asyncio.get_running_loop().time() + 2
    while (got := await reads.mget(keys)) != want:
        assert asyncio.get_running_loop().time() < deadline, f"still {got}, want {want}"
        await asyncio.sleep(0.005)


async def test_cached_reads_skip_redis_until_another_client_changes_the_key(url: str) -> None:
    _fill(url, 3)
    reads = PipelinedReads(url, cache_keys=100, cache_seconds=60)
    assert await reads.mget(["k0", "k1", "absent"]) == ["value 0", "value 1", None]
    before = _mget_calls(url)
    for _ in range(5):
        assert await reads.mget(["k0", "k1", "absent"]) == ["value 0", "value 1", None]
        assert await reads.mget(["k1"]) == ["value 1"]
    assert _mget_calls(url) == before  # all from the cache
    writer = redis_sync.Redis.from_url(url)
    writer.set("k1", "changed")
    writer.set("absent", "now here")
    await _eventually(reads, ["k0", "k1", "absent"], ["value 0", "changed", "now here"])
    writer.flushdb()  # announced as "everything changed"
    await _eventually(reads, ["k0", "k1"], [None, None])
    writer.close()
    reads.close()


async def test_values_still_read_are_renewed_before_they_expire(url: str) -> None:
    """Past half their life, cached values are answered and read again in the background
    (once per key however many reads see them), so they do not expire while read."""
    _fill(url, 3)
    loop = asyncio.get_running_loop()
    reads = PipelinedReads(url, cache_keys=100, cache_seconds=1.0)
    assert await reads.mget(["k0", "k1"]) == ["value 0", "value 1"]
    first = loop.time()
    await asyncio.sleep(0.6)  # past half of 1 s
    before = _mget_calls(url)
    for _ in range(50):  # all answered from the cache, one renewal scheduled
        assert reads.cached(["k0", "k1"]) == ["value 0", "value 1"]
    while _mget_calls(url) == before:
        assert loop.time() < first + 3, "no renewal was sent"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert _mget_calls(url) == before + 1
    # 1.2 s after the first read: expired without the renewal, cached with it.
    await asyncio.sleep(first + 1.2 - loop.time())
    assert reads.cached(["k0", "k1"]) == ["value 0", "value 1"]
    # A value nobody reads is not renewed: it expires.
    await asyncio.sleep(1.5)
    assert reads.cached(["k0"]) is None
    reads.close()


async def test_own_writes_are_read_at_once_even_with_a_read_in_flight(url: str) -> None:
    _fill(url, 1)
    reads = PipelinedReads(url, cache_keys=100, cache_seconds=60)
    assert await reads.mget(["k0"]) == ["value 0"]
    writer = redis_sync.Redis.from_url(url)
    writer.set("k0", "mine")
    reads.forget(["k0"])  # what the store does after its own write returns
    assert await reads.mget(["k0"]) == ["mine"]
    # A read sent before a local write is answered but not kept: it may predate it.
    in_flight = asyncio.ensure_future(reads.mget(["k0"]))
    await asyncio.sleep(0)
    assert reads.cache is not None and len(reads.cache) == 1
    reads.forget(["k0"])
    assert await in_flight == ["mine"]
    assert len(reads.cache) == 0
    writer.close()
    reads.close()


async def test_the_cache_is_bounded_and_emptied_when_the_connection_drops(url: str) -> None:
    _fill(url, 50)
    reads = PipelinedReads(url, cache_keys=10, cache_seconds=60)
    for i in range(50):
        assert await reads.mget([f"k{i}"]) == [f"value {i}"]
    assert reads.cache is not None and len(reads.cache) == 10
    admin = redis_sync.Redis.from_url(url)
    admin.client_kill_filter(_type="normal", skip_me=True)  # our reading connection
    admin.set("k49", "changed while we were away")
    await _eventually(reads, ["k49"], ["changed while we were away"])
    admin.close()
    reads.close()


async def test_the_online_store_reads_its_own_writes_with_the_cache_on(url: str) -> None:
    store = RedisOnlineStore(url, prefix="own", read_cache=1000)
    await store.apply("v", [Record('["a"]', 10, '{"x":1}')], 1)
    assert await store.read("v", ['["a"]']) == {'["a"]': (10, '{"x":1}')}
    await store.apply("v", [Record('["a"]', 20, '{"x":2}')], 2)
    assert await store.read("v", ['["a"]']) == {'["a"]': (20, '{"x":2}')}
    assert await store.delete_expired("v", 30, 100) == 1
    assert await store.read("v", ['["a"]']) == {}
    await store.close()
