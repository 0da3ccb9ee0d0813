"""The registry follower: keeps the served versions and aliases in step with the registry.

It subscribes to the registry's change stream (snapshot first, then live changes;
resumed by revision after a reconnect, with bounded exponential backoff and jitter
while the registry is down). After every change it reconciles: the versions the
policy wants are downloaded into the local cache (digest verified), loaded with the
secure loader and warmed up on their input example; only then do the aliases move to
them, all at once. A version nothing wants any more is unloaded after its queued
requests finish. The cache index written after each reconcile lets a restarted server
answer from the cache while the registry is down.

Operators can override the policy at run time (LoadModel / UnloadModel, own API and
the OIP repository extension). Loading a version (by number or alias) downloads,
verifies, loads and warms it, and keeps it loaded even when no alias points at it any
more. Unloading a version drains and unloads it and stops following it: the policy
will not load it again, and aliases pointing at it are not served (a request for
them answers NOT_FOUND, the default falls back to the latest loaded version) — until
it is loaded again, or until an alias *moves onto it* after the unload: a promotion
is a newer decision than the unload, so the promoted version is loaded and served.
Both overrides live in memory: a restart serves what the policy says again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mlbackend_models.loader import DEFAULT_POLICY, ArtifactFormat, LoadPolicy, load_artifact
from mlbackend_runtime.errors import DependencyUnavailable, FailedPrecondition, NotFound
from mlbackend_serving.core.batching import BatchingPolicy
from mlbackend_serving.core.cache import ArtifactCache, CachedState
from mlbackend_serving.core.model import LoadedModel, ModelKey
from mlbackend_serving.core.service import (
    DEFAULT_ALIAS,
    ModelState,
    Selector,
    ServedVersion,
    ServingCore,
)
from mlbackend_serving.core.versions import (
    Change,
    Heartbeat,
    RegistryState,
    RevisionExpired,
    SnapshotComplete,
    VersionInfo,
    VersionPolicy,
    VersionSource,
)

logger = logging.getLogger("mlbackend.serving.follower")


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt ``n``: exponential, capped, half of it jittered."""

    initial: float = 0.2
    factor: float = 2.0
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 32))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class _CachedVersionLoader:
    """Loads a version from its cached artifact (the loader re-checks the digest)."""

    def __init__(self, info: VersionInfo, cache: ArtifactCache, policy: LoadPolicy) -> None:
        self._info, self._cache, self._policy = info, cache, policy

    def load(self, name: str, version: int) -> tuple[LoadedModel, BatchingPolicy | None, list[str]]:
        info = self._info
        estimator = load_artifact(
            self._cache.blob_path(info.sha256),
            expected_sha256=info.sha256,
            artifact_format=ArtifactFormat(info.format),
            policy=self._policy,
        )
        return info.build(estimator), None, []


class RegistryFollower:
    def __init__(
        self,
        core: ServingCore,
        source: VersionSource,
        cache: ArtifactCache,
        *,
        policy: VersionPolicy | None = None,
        load_policy: LoadPolicy = DEFAULT_POLICY,
        backoff: Backoff | None = None,
        idle_timeout: float = 35.0,
        drain_delay: float = 0.5,
    ) -> None:
        self._core = core
        self._source = source
        self._cache = cache
        self._policy = policy or VersionPolicy()
        self._load_policy = load_policy
        self._backoff = backoff or Backoff()
        self._idle_timeout = idle_timeout
        self._drain_delay = drain_delay
        """No event (not even a heartbeat) for this long: the stream is dead, reconnect."""

        self._state = RegistryState()
        self._revision = 0
        """Last revision applied from the live stream; 0 = take a snapshot next."""
        self._loaded: dict[ModelKey, VersionInfo] = {}
        self._failed: dict[ModelKey, str] = {}
        """Versions that failed to load, with the digest that failed (not retried)."""
        self._problems: dict[ModelKey, str] = {}
        """Why each of those failed (for LoadModel's answer)."""
        self._pinned: set[ModelKey] = set()
        """Loaded by an operator: kept whatever the aliases do, until unloaded."""
        self._unloaded: dict[ModelKey, frozenset[str]] = {}
        """Unloaded by an operator, with the aliases that pointed at it then: not loaded
        again until LoadModel, or until another alias moves onto it."""
        self._published: dict[str, dict[str, int]] = {}
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._snapshots = 0
        self._retry_handle: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False
        self.ready = asyncio.Event()
        """Set once there is a state to serve: from the cache or a registry snapshot."""
        self.synced = asyncio.Event()
        """Set once the registry's snapshot has been reconciled (loaded and swapped in)."""
        self._attempted = asyncio.Event()
        core.managed_by(self)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, wait: float) -> None:
        """Serve what the cache holds, start following; wait up to ``wait`` seconds for
        the registry's state to be loaded (less if the registry cannot be reached)."""
        cached = await asyncio.to_thread(self._cache.load_index)
        if cached is not None:
            for info in cached.versions:
                self._state.versions[info.key] = info
            self._state.aliases = {m: dict(a) for m, a in cached.aliases.items()}
            await self._reconcile(offline=True)
            logger.info(
                "loaded %d version(s) from the cache %s", len(self._loaded), self._cache.root
            )
            self.ready.set()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow(), name="registry-follow"),
            loop.create_task(self._reconcile_forever(), name="registry-reconcile"),
        ]
        synced = loop.create_task(self.synced.wait())
        attempted = loop.create_task(self._attempted.wait())
        await asyncio.wait({synced, attempted}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        if self._attempted.is_set() and not self.synced.is_set() and cached is None:
            logger.warning("registry unreachable and no cache: serving nothing until it answers")
        synced.cancel()
        attempted.cancel()

    async def close(self) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- operator overrides (LoadModel / UnloadModel) -------------------------------------

    async def load(self, name: str, selector: Selector) -> list[ServedVersion]:
        """Load the version ``selector`` names (number or alias; none: the ``production``
        version, else the latest) and keep it loaded until unloaded. Without a selector
        every earlier unload of the model is lifted too."""
        key = self._named(name, selector)
        if selector is None:
            for unloaded in [k for k in self._unloaded if k.name == name]:
                del self._unloaded[unloaded]
        self._unloaded.pop(key, None)
        self._pinned.add(key)
        self._failed.pop(key, None)  # an operator asking again means: try again
        await self._reconcile(offline=not self.connected)
        if key not in self._loaded:
            self._pinned.discard(key)
            info = self._state.versions.get(key)
            if info is not None and not await asyncio.to_thread(self._cache.has, info.sha256):
                raise DependencyUnavailable(
                    "registry", f"{key} could not be downloaded from the registry; retry later"
                )
            raise FailedPrecondition(f"{key} could not be loaded: {self._problems.get(key, '?')}")
        logger.info("%s loaded on request: kept loaded until unloaded", key)
        return [v for v in self._core.versions(name) if v.key == key]

    async def unload(self, name: str, version: int | None) -> list[ServedVersion]:
        """Unload one (or every) loaded version of ``name`` and stop following it."""
        async with self._lock:
            keys = [k for k in self._loaded if k.name == name and version in (None, 0, k.version)]
            if not keys:
                raise NotFound(
                    f"model {name!r} is not loaded" + (f" at version {version}" if version else "")
                )
            for key in keys:
                self._pinned.discard(key)
                self._unloaded[key] = self._aliases_on(key)
                del self._loaded[key]
            self._publish_aliases()  # aliases on them are no longer served
            unloaded: list[ServedVersion] = []
            for key in keys:
                logger.info("%s unloaded on request: not followed until loaded again", key)
                unloaded += await self._core.unload(key.name, key.version)
            await asyncio.to_thread(self._persist)
        return unloaded

    def available(self) -> dict[str, list[int]]:
        """The registry's READY versions of the models the policy follows."""
        found: dict[str, list[int]] = {}
        for key in sorted(self._state.versions, key=lambda k: (k.name, k.version)):
            if self._policy.follows(key.name):
                found.setdefault(key.name, []).append(key.version)
        return found

    def _named(self, name: str, selector: Selector) -> ModelKey:
        state = self._state
        numbers = sorted(k.version for k in state.versions if k.name == name)
        aliases = state.aliases.get(name, {})
        if not numbers:
            raise NotFound(f"model {name!r} has no READY version in the registry")
        if isinstance(selector, int):
            version: int | None = selector
        elif isinstance(selector, str):
            version = aliases.get(selector)
            if version is None:
                raise NotFound(f"model {name!r} has no alias {selector!r} in the registry")
        else:
            version = aliases.get(DEFAULT_ALIAS, numbers[-1])
        if version not in numbers:
            raise NotFound(f"model {name!r} has no READY version {version} in the registry")
        return ModelKey(name, version)

    def _aliases_on(self, key: ModelKey) -> frozenset[str]:
        aliases = self._state.aliases.get(key.name, {})
        return frozenset(a for a, v in aliases.items() if v == key.version)

    def _lift_unloads_by_promotion(self) -> None:
        for key, before in list(self._unloaded.items()):
            now = self._aliases_on(key)
            if now - before:
                logger.info("%s: alias %s moved onto it after its unload: loading it again", key,
                            ", ".join(sorted(now - before)))  # fmt: skip
                del self._unloaded[key]
            else:
                # An alias that moves away and back later counts as a new promotion.
                self._unloaded[key] = now

    # --- the change stream -------------------------------------------------------------

    async def _follow(self) -> None:
        attempt = 0
        while True:
            try:
                async for _ in self._stream():
                    attempt = 0
            except RevisionExpired:
                logger.warning("revision %d expired in the registry: resyncing", self._revision)
                self._revision = 0
            except Exception as exc:  # the registry being down must never stop serving
                if self.connected or attempt == 0:
                    logger.warning("registry stream lost: %s: %s", type(exc).__name__, exc)
            self.connected = False
            self._attempted.set()
            delay = self._backoff.delay(attempt)
            attempt += 1
            logger.debug("reconnecting to the registry in %.2f s", delay)
            await asyncio.sleep(delay)

    async def _stream(self) -> AsyncIterator[Change]:
        """Apply the registry's changes from the last revision seen; yields each."""
        start = self._revision
        pending = RegistryState() if start == 0 else None
        changes = self._source.watch(start)
        try:
            while True:
                try:
                    change = await asyncio.wait_for(anext(changes), self._idle_timeout)
                except StopAsyncIteration:
                    return
                if not self.connected:
                    self.connected = True
                    logger.info("following the registry from revision %d", start)
                if change.snapshot and pending is not None:
                    pending.apply(change)
                elif isinstance(change, SnapshotComplete) and pending is not None:
                    pending.revision = change.revision
                    self._state, pending = pending, None
                    self._revision = change.revision
                    self._snapshots += 1
                    self._dirty.set()
                elif isinstance(change, Heartbeat):
                    pass
                elif pending is None:
                    self._state.apply(change)
                    self._revision = change.revision
                    self._dirty.set()
                yield change
        finally:
            aclose = getattr(changes, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    # --- reconciling -------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            snapshots = self._snapshots
            try:
                await self._reconcile(offline=False)
            except Exception:  # keep following; the next change reconciles again
                logger.exception("reconciling with the registry failed")
                self._retry_later()
                continue
            if snapshots:
                self.ready.set()
                self.synced.set()

    def _retry_later(self) -> None:
        if self._retry_handle is None or self._retry_handle.cancelled():
            loop = asyncio.get_running_loop()
            delay = self._backoff.delay(4)
            self._retry_handle = loop.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry_handle = None
        self._dirty.set()

    async def _reconcile(self, *, offline: bool) -> None:
        async with self._lock:
            state = self._state
            self._lift_unloads_by_promotion()
            wanted = self._policy.select(state) | {k for k in self._pinned if k in state.versions}
            wanted -= self._unloaded.keys()
            infos = {k: state.versions[k] for k in wanted}
            self._forget_unloaded()
            for key in sorted(wanted, key=lambda k: (k.name, k.version)):
                info = infos[key]
                loaded = self._loaded.get(key)
                if loaded is not None and loaded.sha256 == info.sha256:
                    continue
                if self._failed.get(key) == info.sha256:
                    continue
                if await self._bring_in(info, offline=offline):
                    self._publish_aliases()
            self._publish_aliases()
            in_use = {ModelKey(m, v) for m, aliases in self._published.items()
                      for v in aliases.values()}  # fmt: skip
            retired = [k for k in self._loaded if k not in wanted and k not in in_use]
            if retired and not offline:
                # Requests that resolved a retired version before the swap finish on it.
                await asyncio.sleep(self._drain_delay)
            for key in retired:
                del self._loaded[key]
                logger.info("%s is no longer wanted: unloading it once its requests finish", key)
                with contextlib.suppress(Exception):
                    await self._core.unload(key.name, key.version)
            if not offline:
                await asyncio.to_thread(self._persist)

    async def _bring_in(self, info: VersionInfo, *, offline: bool) -> bool:
        """Download (unless cached), load and warm ``info``; False if it is not ready."""
        key = info.key
        if info.problem:
            if self._failed.get(key) != info.sha256:
                logger.error("%s cannot be served: %s", key, info.problem)
            self._failed[key] = info.sha256
            self._problems[key] = info.problem
            return False
        if not await asyncio.to_thread(self._cache.has, info.sha256):
            if offline:
                logger.warning("%s is not in the cache; waiting for the registry", key)
                return False
            try:
                await self._download(info)
            except Exception as exc:  # registry down or bytes corrupted: try again later
                logger.warning("%s: download failed: %s: %s", key, type(exc).__name__, exc)
                self._retry_later()
                return False
        if key in self._loaded or any(v.key == key for v in self._core.versions(key.name)):
            # Same number, new bytes (a re-created model): replace the old load.
            self._loaded.pop(key, None)
            await self._core.unload(key.name, key.version)
        loader = _CachedVersionLoader(info, self._cache, self._load_policy)
        served = await self._core.load(key.name, key.version, raise_on_failure=False, source=loader)
        if served.state is not ModelState.READY:
            logger.error("%s failed to load; keeping the current versions: %s", key, served.reason)
            self._failed[key] = info.sha256
            self._problems[key] = served.reason
            await self._core.unload(key.name, key.version)
            return False
        self._failed.pop(key, None)
        self._loaded[key] = info
        return True

    async def _download(self, info: VersionInfo) -> None:
        pending = await asyncio.to_thread(self._cache.begin, info.sha256)
        try:
            await self._source.download(info, pending.file)
            await asyncio.to_thread(pending.commit)
        finally:
            await asyncio.to_thread(pending.discard)
        logger.info("%s downloaded into the cache (sha256 %s)", info.key, info.sha256[:12])

    def _forget_unloaded(self) -> None:
        """Versions an operator unloaded by hand are loaded again if still wanted."""
        ready = {v.key for v in self._core.versions() if v.state is ModelState.READY}
        for key in [k for k in self._loaded if k not in ready]:
            del self._loaded[key]

    def _publish_aliases(self) -> None:
        """Move every alias whose target is loaded; an alias whose new target is not
        ready yet (or failed) stays on the version it pointed at."""
        for name in set(self._state.aliases) | set(self._published):
            if not self._policy.follows(name):
                continue
            current = self._published.get(name, {})
            moved: dict[str, int] = {}
            for alias, version in self._state.aliases.get(name, {}).items():
                if ModelKey(name, version) in self._loaded:
                    moved[alias] = version
                elif alias in current and ModelKey(name, current[alias]) in self._loaded:
                    moved[alias] = current[alias]
            if moved != current:
                self._core.set_aliases(name, moved)
                self._published[name] = moved
                changes = {a: (current.get(a), v) for a, v in moved.items() if current.get(a) != v}
                for alias, (before, after) in sorted(changes.items()):
                    logger.info("%s: alias %r → version %s (was %s)", name, alias, after, before)

    def _persist(self) -> None:
        self._cache.save_index(
            CachedState(
                revision=self._revision,
                versions=sorted(self._loaded.values(), key=lambda v: (v.name, v.version)),
                aliases={m: dict(a) for m, a in self._published.items() if a},
            )
        )
        self._cache.prune({v.sha256 for v in self._loaded.values()})
