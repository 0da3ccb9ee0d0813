"""Online store on Redis: one string key per (view, entity) holding ``"<event_us>|<payload>"``.

Writes go through one Lua script per slice of a batch, so the "newest event time wins"
compare and the watermark update are atomic inside Redis; a read is one MGET per view,
sent on a connection shared by concurrent reads, whose answers are kept until Redis
says they changed (``redis_pipeline``), unless the URL asks for TLS, which redis-py
handles.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as redis
from redis.exceptions import RedisError

from mlbackend_features.core.model import Record
from mlbackend_features.stores.online import OnlineStore
from mlbackend_features.stores.redis_pipeline import PipelinedReads, RedisReadError
from mlbackend_runtime.errors import DependencyUnavailable

# KEYS[1] = watermark, KEYS[2..] = values; ARGV[1] = sequence, then (event_us, payload) pairs.
_APPLY = """
local changed = 0
for i = 2, #KEYS do
  local ts = ARGV[2 * i - 2]
  local current = redis.call('GET', KEYS[i])
  local newer = true
  if current then
    local stored = tonumber(string.match(current, '^(-?%d+)|'))
    if stored and stored > tonumber(ts) then newer = false end
  end
  if newer then
    redis.call('SET', KEYS[i], ts .. '|' .. ARGV[2 * i - 1])
    changed = changed + 1
  end
end
local mark = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > mark then redis.call('SET', KEYS[1], ARGV[1]) end
return changed
"""

# Records per script call: long scripts block every other Redis client.
_SLICE = 500
_DEPENDENCY = "redis"


class RedisOnlineStore(OnlineStore):
    name = "redis"

    def __init__(self, url: str, prefix: str = "mlbackend:features", read_cache: int = 0) -> None:
        self._client = redis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._watermark = f"{prefix}:applied_seq"
        self._script = self._client.register_script(_APPLY)
        self._reads = (
            PipelinedReads(url, cache_keys=read_cache, decode=_stored)
            if PipelinedReads.supports(url)
            else None
        )

    def _key(self, view: str, entity: str) -> str:
        return f"{self._prefix}:v:{view}:{entity}"

    def _keys(self, view: str, entities: Sequence[str]) -> list[str]:
        head = self._key(view, "")
        return [head + e for e in entities]

    async def apply(self, view: str, records: Sequence[Record], sequence: int) -> int:
        changed = 0
        try:
            if not records:
                changed += int(await self._script(keys=[self._watermark], args=[sequence]))
            for start in range(0, len(records), _SLICE):
                part = records[start : start + _SLICE]
                last = start + _SLICE >= len(records)
                keys = [self._watermark, *(self._key(view, r.entity) for r in part)]
                args: list[str | int] = [sequence if last else 0]
                for record in part:
                    args += [record.event_us, record.payload]
                try:
                    changed += int(await self._script(keys=keys, args=args))
                finally:
                    # Also after an error: the script may have run before it was reported.
                    self._forget(keys[1:])
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(_DEPENDENCY, f"redis: {exc}") from exc
        return changed

    def _forget(self, keys: Sequence[str]) -> None:
        if self._reads is not None:
            self._reads.forget(keys)

    async def read(self, view: str, entities: Sequence[str]) -> dict[str, tuple[int, str]]:
        if not entities:
            return {}
        keys = self._keys(view, entities)
        try:
            if self._reads is None:
                found = list(map(_stored, await self._client.mget(keys)))
            else:
                found = await self._reads.mget(keys)  # decoded as they arrive
        except (RedisReadError, RedisError, OSError) as exc:
            raise DependencyUnavailable(_DEPENDENCY, f"redis: {exc}") from exc
        return {e: hit for e, hit in zip(entities, found, strict=True) if hit is not None}

    def read_now(self, view: str, entities: Sequence[str]) -> list[tuple[int, str] | None] | None:
        if self._reads is None or not entities:
            return None
        return self._reads.cached(self._keys(view, entities))

    async def applied_sequence(self) -> int:
        try:
            return int(await self._client.get(self._watermark) or 0)
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(_DEPENDENCY, f"redis: {exc}") from exc

    async def delete_expired(self, view: str, cutoff_us: int, limit: int) -> int:
        # SCAN visits a bounded slice per call; each key is re-checked inside a script so
        # a value refreshed meanwhile is kept.
        deleted = 0
        try:
            cursor = 0
            seen = 0
            while seen < limit:
                cursor, keys = await self._client.scan(
                    cursor, match=f"{self._prefix}:v:{view}:*", count=min(limit, 500)
                )
                seen += len(keys)
                if keys:
                    deleted += await self._delete_older(list(map(_text, keys)), cutoff_us)
                if cursor == 0:
                    break
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(_DEPENDENCY, f"redis: {exc}") from exc
        return deleted

    async def _delete_older(self, keys: list[str], cutoff_us: int) -> int:
        try:
            removed = await self._client.eval(_DELETE_OLDER, len(keys), *keys, cutoff_us)
        except BaseException:
            self._forget(keys)  # which were deleted is unknown: all of them
            raise
        # Only what was deleted leaves the read cache: the hot values stay.
        self._forget(list(map(_text, removed)))
        return len(removed)

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable(_DEPENDENCY, f"redis: {exc}") from exc

    async def close(self) -> None:
        if self._reads is not None:
            self._reads.close()
        await self._client.aclose()


_DELETE_OLDER = """
local deleted = {}
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current then
    local stored = tonumber(string.match(current, '^(-?%d+)|'))
    if stored and stored < tonumber(ARGV[1]) then
      redis.call('DEL', KEYS[i])
      deleted[#deleted + 1] = KEYS[i]
    end
  end
end
return deleted
"""


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode()


def _stored(value: str | bytes | None) -> tuple[int, str] | None:
    """``(event_us, payload)`` of one ``event_us|payload`` string (None: no value)."""
    if value is None:
        return None
    ts, _, payload = _text(value).partition("|")
    return int(ts), payload
