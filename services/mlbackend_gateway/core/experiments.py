"""A/B experiments: definitions kept in a store, sticky weighted assignment, shadows.

Assignment hashes the entity key with the experiment's salt (sha256, so every replica
and every process agrees) into ``[0, total weight)`` and walks the variants in order.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from mlbackend_gateway.core.model import EntityKey, Scalar, VersionSelector
from mlbackend_runtime.errors import FieldViolation, InvalidInput, NotFound

NAME_PREFIX = "experiments/"
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_VARIANTS = 16


class ExperimentState(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Variant:
    name: str
    version: VersionSelector
    weight: int = 0


@dataclass(frozen=True)
class Experiment:
    name: str
    model: str
    variants: tuple[Variant, ...]
    shadow_variants: tuple[Variant, ...] = ()
    salt: str = ""
    state: ExperimentState = ExperimentState.RUNNING
    description: str = ""
    create_time: datetime | None = None
    stop_time: datetime | None = None
    created_by: str = ""
    stop_reason: str = ""

    @property
    def total_weight(self) -> int:
        return sum(v.weight for v in self.variants)


@dataclass(frozen=True)
class ExperimentPage:
    experiments: list[Experiment]
    next_page_token: str = ""


class ExperimentStore(Protocol):
    """Where experiments live, shared by every gateway replica."""

    async def create(self, experiment: Experiment) -> Experiment:
        """AlreadyExists on a taken name; FailedPrecondition if the model already has a
        running experiment (checked atomically by the store)."""
        ...

    async def get(self, name: str) -> Experiment:
        """NotFound when there is none."""
        ...

    async def running_for(self, model: str) -> Experiment | None: ...

    async def list(
        self, model: str, state: ExperimentState | None, page_size: int, page_token: str
    ) -> ExperimentPage: ...

    async def stop(self, name: str, reason: str, when: datetime) -> Experiment:
        """Idempotent: stopping a stopped experiment returns it unchanged."""
        ...

    async def close(self) -> None: ...


def entity_fingerprint(key: EntityKey) -> str:
    """A canonical text of an entity key: sorted join keys, typed values."""
    parts = []
    for name in sorted(key):
        value: Scalar = key[name]
        parts.append(f"{name}={type(value).__name__}:{value}")
    return "\x1f".join(parts)


def bucket(salt: str, key: EntityKey, modulus: int) -> int:
    digest = hashlib.sha256(f"{salt}\x1e{entity_fingerprint(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % modulus


def assign(experiment: Experiment, key: EntityKey) -> Variant:
    """The variant ``key`` gets: stable for a given salt, proportional to weights."""
    point = bucket(experiment.salt, key, experiment.total_weight)
    for variant in experiment.variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return experiment.variants[-1]


def parse_name(name: str, field_name: str = "name") -> str:
    if not name.startswith(NAME_PREFIX) or not _ID.fullmatch(name[len(NAME_PREFIX) :]):
        raise InvalidInput.field(field_name, "must be experiments/{id}")
    return name


def validate_new(
    experiment: Experiment, experiment_id: str, creator: str, now: datetime
) -> Experiment:
    """The experiment to store, or InvalidInput naming every bad field."""
    violations: list[FieldViolation] = []
    if not _ID.fullmatch(experiment_id):
        violations.append(
            FieldViolation(
                "experiment_id", "1-63 of a-z, 0-9, '_', '.', '-', starting alphanumeric"
            )
        )
    if not experiment.model:
        violations.append(FieldViolation("experiment.model", "required"))
    if not experiment.variants:
        violations.append(FieldViolation("experiment.variants", "at least one variant"))
    if len(experiment.variants) + len(experiment.shadow_variants) > MAX_VARIANTS:
        violations.append(FieldViolation("experiment.variants", f"at most {MAX_VARIANTS} in all"))
    seen: set[str] = set()
    for group, variants in (("variants", experiment.variants),
                            ("shadow_variants", experiment.shadow_variants)):  # fmt: skip
        for i, variant in enumerate(variants):
            where = f"experiment.{group}[{i}]"
            if not _VARIANT.fullmatch(variant.name):
                violations.append(FieldViolation(f"{where}.name", "1-63 letters, digits, _ . -"))
            elif variant.name in seen:
                violations.append(FieldViolation(f"{where}.name", "duplicate variant name"))
            seen.add(variant.name)
            if variant.version.is_default:
                violations.append(FieldViolation(f"{where}.version", "a version or an alias"))
            elif variant.version.version is not None and variant.version.version < 1:
                violations.append(FieldViolation(f"{where}.version.version", "must be >= 1"))
            if group == "variants" and variant.weight <= 0:
                violations.append(FieldViolation(f"{where}.weight", "must be > 0"))
    if violations:
        raise InvalidInput(f"invalid experiment: {violations[0].field}: "
                           f"{violations[0].description}", violations)  # fmt: skip
    return replace(
        experiment,
        name=NAME_PREFIX + experiment_id,
        salt=experiment.salt or secrets.token_hex(16),
        state=ExperimentState.RUNNING,
        create_time=now,
        stop_time=None,
        created_by=creator,
        stop_reason="",
        shadow_variants=tuple(replace(v, weight=0) for v in experiment.shadow_variants),
    )


@dataclass
class ExperimentRouter:
    """The running experiment of a model, read through from the store.

    Cached for ``ttl`` seconds: every replica reads the same store, so a change made
    through any replica routes everywhere within that bound. When an entry expires, the
    requests that find it so share one read of the store instead of each making their
    own (at 32 concurrent requests, 32 queries a second per replica otherwise).
    """

    store: ExperimentStore
    ttl: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _cache: dict[str, tuple[Experiment | None, float]] = field(default_factory=dict)
    _reading: dict[str, asyncio.Future[Experiment | None]] = field(default_factory=dict)

    async def running(self, model: str) -> Experiment | None:
        cached = self._cache.get(model)
        if cached is not None and self.clock() - cached[1] < self.ttl:
            return cached[0]
        reading = self._reading.get(model)
        if reading is None:
            reading = self._reading[model] = asyncio.ensure_future(self._read(model))
            # Retrieved even when every caller left: no "never retrieved" noise.
            reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        # Shielded: one caller cancelled (its client gone) does not fail the others.
        return await asyncio.shield(reading)

    async def _read(self, model: str) -> Experiment | None:
        try:
            started = self.clock()
            experiment = await self.store.running_for(model)
            if self._reading.get(model) is asyncio.current_task():  # not forgotten meanwhile
                self._cache[model] = (experiment, started)
            return experiment
        finally:
            if self._reading.get(model) is asyncio.current_task():
                del self._reading[model]

    def forget(self, model: str) -> None:
        self._cache.pop(model, None)
        # A read already out may predate the change: the next request reads again.
        self._reading.pop(model, None)


class ExperimentService:
    def __init__(self, store: ExperimentStore, router: ExperimentRouter) -> None:
        self._store = store
        self._router = router

    async def create(self, experiment: Experiment, experiment_id: str, creator: str) -> Experiment:
        stored = await self._store.create(
            validate_new(experiment, experiment_id, creator, datetime.now(UTC))
        )
        self._router.forget(stored.model)
        return stored

    async def get(self, name: str) -> Experiment:
        return await self._store.get(parse_name(name))

    async def list(
        self, model: str, state: ExperimentState | None, page_size: int, page_token: str
    ) -> ExperimentPage:
        if page_size < 0:
            raise InvalidInput.field("page_size", "must be >= 0")
        return await self._store.list(model, state, min(page_size or 50, 1000), page_token)

    async def stop(self, name: str, reason: str) -> Experiment:
        stopped = await self._store.stop(parse_name(name), reason, datetime.now(UTC))
        self._router.forget(stopped.model)
        return stopped


def require(experiment: Experiment | None, name: str) -> Experiment:
    if experiment is None:
        raise NotFound(f"experiment {name!r} not found")
    return experiment


def variants_by_name(experiment: Experiment) -> Mapping[str, Variant]:
    return {v.name: v for v in (*experiment.variants, *experiment.shadow_variants)}


def versions_of(variants: Sequence[Variant]) -> list[VersionSelector]:
    return [v.version for v in variants]
