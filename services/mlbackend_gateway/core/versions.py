"""Which version a request gets: alias or number → registered version, cached.

While the registry's watch stream is live (``live``), cached entries are exact: the
watcher drops an entry as soon as the registry reports a change to it. While it is
not (not started yet, registry down, reconnecting), entries expire after ``ttl``
seconds so an alias move is seen within that bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mlbackend_gateway.core.model import (
    DEFAULT_ALIAS,
    ModelVersionInfo,
    RegisteredModelInfo,
    VersionSelector,
)
from mlbackend_gateway.core.ports import ModelCatalog
from mlbackend_runtime.errors import FailedPrecondition, NotFound


class VersionResolver:
    def __init__(
        self,
        catalog: ModelCatalog,
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._catalog = catalog
        self._ttl = ttl
        self._clock = clock
        self._models: dict[str, tuple[RegisteredModelInfo, float]] = {}
        self._versions: dict[tuple[str, int], tuple[ModelVersionInfo, float]] = {}
        self.live = False
        # Bumped by every change notice, so a fetch that raced a change is not cached.
        self._generation = 0

    def _fresh(self, fetched: float) -> bool:
        return self.live or self._clock() - fetched < self._ttl

    async def model(self, model: str) -> RegisteredModelInfo:
        cached = self._models.get(model)
        if cached is not None and self._fresh(cached[1]):
            return cached[0]
        generation = self._generation
        info = await self._catalog.get_model(model)
        if generation == self._generation:
            self._models[model] = (info, self._clock())
        return info

    async def version(self, model: str, number: int) -> ModelVersionInfo:
        cached = self._versions.get((model, number))
        if cached is not None and self._fresh(cached[1]):
            return cached[0]
        generation = self._generation
        info = await self._catalog.get_version(model, number)
        if generation == self._generation:
            self._versions[(model, number)] = (info, self._clock())
        return info

    async def resolve(self, model: str, selector: VersionSelector) -> ModelVersionInfo:
        if selector.version is not None:
            return await self.version(model, selector.version)
        registered = await self.model(model)
        if selector.alias:
            number = registered.aliases.get(selector.alias)
            if number is None:
                raise NotFound(f"model {model!r} has no alias {selector.alias!r}")
        else:
            number = registered.aliases.get(DEFAULT_ALIAS) or registered.latest_version
            if not number:
                raise FailedPrecondition(f"model {model!r} has no version to serve")
        return await self.version(model, number)

    # --- called by the registry watcher --------------------------------------------------

    def set_live(self, live: bool) -> None:
        if live and not self.live:
            # Whatever was cached before the snapshot may have changed unseen.
            self.clear()
        self.live = live

    def clear(self) -> None:
        self._generation += 1
        self._models.clear()
        self._versions.clear()

    def changed(self, model: str, version: int | None = None) -> None:
        """The registry reports a change to ``model`` (its aliases) or one of its versions."""
        self._generation += 1
        if version is None:
            self._models.pop(model, None)
        else:
            self._versions.pop((model, version), None)
            # A new version moves ``latest``.
            self._models.pop(model, None)

    def known_models(self) -> list[str]:
        return sorted(self._models)
