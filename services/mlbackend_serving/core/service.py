"""The serving core: which model versions are loaded, and predictions through them.

Loading, unloading and alias moves happen on the event loop; predictions may come from
the loop (``predict``) or from the threads of a thread-pool front (``predict_blocking``),
which read an immutable routing table replaced whole on every change.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from array import array
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

from mlbackend_runtime.errors import DomainError, FailedPrecondition, InvalidInput, NotFound
from mlbackend_serving.core.batching import (
    DEFAULT_BATCHING,
    Batcher,
    BatchingPolicy,
    BatchObserver,
    ThreadBatcher,
)
from mlbackend_serving.core.health import HealthReport, RequestStats
from mlbackend_serving.core.inputs import RowsInput, Tensor, plain_columns, plain_matrix
from mlbackend_serving.core.model import (
    LoadedModel,
    Matrix,
    ModelKey,
    OutputSpec,
    Predictions,
    RowPrediction,
)
from mlbackend_serving.core.model_dir import ModelDirectory

logger = logging.getLogger("mlbackend.serving")

DEFAULT_ALIAS = "production"
WARMUP_ROUNDS = 3
# One request must not monopolise the model for long: split bigger jobs.
MAX_ROWS_PER_REQUEST = 65_536


class ModelState(enum.Enum):
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


class VersionLoader(Protocol):
    """Loads one version (blocking; run off the event loop): the model directory, or
    the registry follower's artifact cache."""

    def load(
        self, name: str, version: int
    ) -> tuple[LoadedModel, BatchingPolicy | None, list[str]]: ...


class ModelObserver(Protocol):
    """Per-version metrics; the app wires Prometheus in, tests may pass nothing."""

    def for_version(self, key: ModelKey) -> VersionObserver: ...


class VersionObserver(BatchObserver):
    def request(self, seconds: float, ok: bool) -> None:
        pass


class _NoMetrics:
    def for_version(self, key: ModelKey) -> VersionObserver:
        return VersionObserver()


# Version selection: None (default), a version number, or an alias.
Selector = int | str | None


class ModelManager(Protocol):
    """Where LoadModel / UnloadModel go when something other than the model directory
    decides what is loaded (registry mode: the follower)."""

    async def load(self, name: str, selector: Selector) -> list[ServedVersion]: ...

    async def unload(self, name: str, version: int | None) -> list[ServedVersion]: ...

    def available(self) -> dict[str, list[int]]: ...


@dataclass
class ServedVersion:
    """A model version inside serving, whatever its state."""

    key: ModelKey
    state: ModelState
    reason: str = ""
    model: LoadedModel | None = None
    batcher: Batcher | ThreadBatcher | None = None
    aliases: tuple[str, ...] = ()
    ready_time: float | None = None
    stats: RequestStats = field(default_factory=RequestStats)
    observer: VersionObserver = field(default_factory=VersionObserver)

    @property
    def policy(self) -> BatchingPolicy:
        return self.batcher.policy if self.batcher else BatchingPolicy()


@dataclass(frozen=True)
class PredictionResult:
    key: ModelKey
    output: OutputSpec
    predictions: Predictions


@dataclass(frozen=True)
class RowResult:
    """:meth:`ServingCore.predict_row`'s answer: the version and the row's outputs."""

    key: ModelKey
    row: RowPrediction


class ServingCore:
    def __init__(
        self,
        executor: Executor,
        *,
        directory: ModelDirectory | None = None,
        batching: BatchingPolicy = DEFAULT_BATCHING,
        observer: ModelObserver | None = None,
        threaded: bool = False,
    ) -> None:
        """``threaded``: requests arrive on a thread-pool front's threads
        (``predict_blocking``), so batches run on the caller's thread instead of a task."""
        self._executor = executor
        self._directory = directory
        self._batching = batching
        self._observer = observer or _NoMetrics()
        self._batcher_type: type[Batcher | ThreadBatcher] = ThreadBatcher if threaded else Batcher
        self._versions: dict[ModelKey, ServedVersion] = {}
        self._routes: dict[str, tuple[ServedVersion, ...]] = {}
        """Per model, its versions by number; rebuilt whole when versions come or go."""
        self._expected: set[ModelKey] = set()
        """Versions that should be READY for the server to be ready."""
        self._manager: ModelManager | None = None
        self.fills_batches = False
        """Some version waits for its batches to fill (``max_wait`` > 0): on a thread
        front, each request waiting in such a batch holds a thread of its own."""

    def managed_by(self, manager: ModelManager) -> None:
        """Route LoadModel / UnloadModel / the repository index to ``manager``."""
        self._manager = manager

    # --- predictions ------------------------------------------------------------------

    async def predict(self, name: str, selector: Selector, inputs: RowsInput) -> PredictionResult:
        served, rows, started = self._admit(name, selector, inputs)
        assert served.batcher is not None
        with _Recorded(served, started):
            return self._result(served, await served.batcher.predict(rows))

    def predict_blocking(
        self, name: str, selector: Selector, inputs: RowsInput
    ) -> PredictionResult:
        """``predict`` for a thread-pool front: blocks the calling thread, never the loop.

        A light model (its trees walked in C, numpy transformers at most: a call costs
        microseconds, see ``fastpath.is_light``) whose batches do not wait to fill is
        called on this thread at once, beside the queue: queueing behind another call
        to share it costs more than the call (measured: ``predict_light``)."""
        served, rows, started = self._admit(name, selector, inputs)
        model, batcher = served.model, served.batcher
        assert model is not None and isinstance(batcher, ThreadBatcher)
        with _Recorded(served, started):
            if _called_beside(model, batcher):
                return self._result(served, batcher.run_beside(rows, model.predict))
            return self._result(served, batcher.run(rows))

    def predict_light(
        self, name: str, selector: Selector, tensor: Tensor, *, labels: bool
    ) -> PredictionResult | None:
        """``predict_blocking`` of the usual OIP request, one ``[N, F]`` tensor of finite
        numbers (``inputs.plain_matrix``), to a light model whose batches do not wait:
        its values are the rows as they are, so they are not checked one by one, and
        labels and confidence are computed only when ``labels`` (else probabilities or
        values only). Alternated runs at concurrency 32, single-row ModelInfer:
        RandomForest 2,928 / 2,919 rps through the queue, 3,490 / 3,291 this way;
        HistGradientBoosting 3,281 / 3,348 and 3,605 / 3,429.
        None: anything else; ``predict_blocking`` takes it and says what is wrong."""
        served = self.resolve(name, selector)
        model, batcher = served.model, served.batcher
        assert model is not None and isinstance(batcher, ThreadBatcher)
        if not _called_beside(model, batcher):
            return None
        rows = plain_matrix(tensor, model.signature)
        if rows is None or len(rows) > MAX_ROWS_PER_REQUEST:
            return None
        with _Recorded(served, time.perf_counter()):
            predictions = batcher.run_beside(rows, model.predict if labels else model.scores)
        return PredictionResult(served.key, model.output, predictions)

    def predict_row(
        self,
        name: str,
        selector: Selector,
        input_name: str,
        values: array[float],
        *,
        labels: bool,
    ) -> RowResult | None:
        """:meth:`predict_light` of a one-row request whose values arrive as plain floats
        (finite, float64; ``wire.row_values``), through the model's single-row form
        (``LoadedModel.row``): the same numbers, label and records, no numpy. Measured
        on the bench's HistGradientBoosting model (single-row ModelInfer, callgrind):
        558k instructions a request against 597k through the matrix path; at c=32,
        alternated, 4,872-5,109 rps against 4,511-4,823. None: anything else, which
        :meth:`predict_light` takes."""
        served = self.resolve(name, selector)
        model, batcher = served.model, served.batcher
        assert model is not None and isinstance(batcher, ThreadBatcher)
        if (
            model.row is None
            or not _called_beside(model, batcher)
            or not plain_columns(model.signature, input_name, len(values))
        ):
            return None
        with _Recorded(served, time.perf_counter()):
            row = batcher.run_beside((values,), lambda _: model.predict_row(values, labels))
        return RowResult(served.key, row)

    def answers_at_once(self, name: str, selector: Selector) -> bool:
        """Whether a prediction for ``name``/``selector`` runs on the calling thread
        without waiting for anything: a light model whose batches do not wait to fill
        (what ``predict_light`` and ``predict_row`` call beside the queue). False for
        anything else, a model not served included (the caller then learns why from
        the prediction itself)."""
        try:
            served = self.resolve(name, selector)
        except DomainError:
            return False
        model, batcher = served.model, served.batcher
        return (
            model is not None
            and isinstance(batcher, ThreadBatcher)
            and _called_beside(model, batcher)
        )

    def _admit(
        self, name: str, selector: Selector, inputs: RowsInput
    ) -> tuple[ServedVersion, Matrix, float]:
        """The version to use, the validated rows and when validation began (a rejected
        request counts as a failed one)."""
        served = self.resolve(name, selector)
        assert served.model is not None
        started = time.perf_counter()
        with _Recorded(served, started, only_failure=True):
            rows = inputs.matrix(served.model.signature)
            if len(rows) > MAX_ROWS_PER_REQUEST:
                raise InvalidInput.field(
                    "rows", f"{len(rows)} rows; at most {MAX_ROWS_PER_REQUEST} per request"
                )
        return served, rows, started

    @staticmethod
    def _result(served: ServedVersion, predictions: Predictions) -> PredictionResult:
        assert served.model is not None
        return PredictionResult(served.key, served.model.output, predictions)

    def resolve(self, name: str, selector: Selector) -> ServedVersion:
        """The READY version a request names: number, alias, or production/latest."""
        versions = self._routes.get(name)
        if not versions:
            raise NotFound(f"model {name!r} is not loaded")
        ready = _READY
        if isinstance(selector, int):
            chosen = next((v for v in versions if v.key.version == selector), None)
            if chosen is None:
                raise NotFound(f"model {name!r} has no version {selector} loaded")
        elif isinstance(selector, str):
            chosen = next(
                (v for v in reversed(versions) if v.state is ready and selector in v.aliases),
                None,
            )
            if chosen is None:
                raise NotFound(f"model {name!r} has no loaded version with alias {selector!r}")
        else:
            chosen = next(
                (v for v in reversed(versions) if v.state is ready and DEFAULT_ALIAS in v.aliases),
                None,
            ) or next((v for v in reversed(versions) if v.state is ready), versions[-1])
        if chosen.state is not ready:
            raise FailedPrecondition(
                f"{chosen.key} is {chosen.state.value}"
                + (f": {chosen.reason}" if chosen.reason else "")
            )
        return chosen

    def _reroute(self, name: str) -> None:
        versions = tuple(
            sorted((v for k, v in self._versions.items() if k.name == name), key=_version_of)
        )
        routes = dict(self._routes)
        if versions:
            routes[name] = versions
        else:
            routes.pop(name, None)
        self._routes = routes  # one assignment: readers see the old table or the new one

    def is_ready(self, name: str, selector: Selector) -> bool:
        try:
            self.resolve(name, selector)
        except DomainError:
            return False
        return True

    # --- what is loaded -----------------------------------------------------------------

    def versions(self, name: str | None = None) -> list[ServedVersion]:
        return sorted(
            (v for k, v in self._versions.items() if name in (None, "", k.name)),
            key=lambda v: (v.key.name, v.key.version),
        )

    @property
    def ready(self) -> bool:
        """Every version this server was asked to load is READY (strict readiness)."""
        return all(
            (v := self._versions.get(k)) is not None and v.state is ModelState.READY
            for k in self._expected
        )

    def health(self, name: str | None, version: int | None, window: float | None) -> list[
        tuple[ServedVersion, HealthReport]
    ]:  # fmt: skip
        chosen = [v for v in self.versions(name) if version in (None, 0, v.key.version)]
        if name and not chosen:
            raise NotFound(
                f"model {name!r} is not loaded" + (f" at version {version}" if version else "")
            )
        return [(v, v.stats.report() if window is None else v.stats.report(window)) for v in chosen]

    # --- loading (simple mode: from the model directory) ---------------------------------

    def available(self) -> dict[str, list[int]]:
        """Versions that could be loaded (the repository index)."""
        if self._manager is not None:
            return self._manager.available()
        return self._directory.versions() if self._directory else {}

    async def load_directory(self) -> None:
        """Load and warm every version of the model directory; failures are kept as FAILED."""
        for name, versions in self.available().items():
            for version in versions:
                await self.load(name, version, raise_on_failure=False)

    async def load_model(self, name: str, selector: Selector) -> list[ServedVersion]:
        """LoadModel / RepositoryModelLoad: a version, or every version of the model
        (registry mode: what the follower decides, see ``RegistryFollower.load``)."""
        if self._manager is not None:
            return await self._manager.load(name, selector)
        versions = self._source().versions().get(name)
        if not versions:
            raise NotFound(f"model {name!r} is not in the model directory")
        if isinstance(selector, int):
            if selector not in versions:
                raise NotFound(f"model {name!r} has no version {selector} in the model directory")
            versions = [selector]
        elif isinstance(selector, str):
            raise FailedPrecondition("aliases are resolved by the registry; give a version number")
        return [await self.load(name, v) for v in versions]

    async def load(
        self,
        name: str,
        version: int,
        *,
        raise_on_failure: bool = True,
        source: VersionLoader | None = None,
    ) -> ServedVersion:
        key = ModelKey(name, version)
        self._expected.add(key)
        current = self._versions.get(key)
        if current is not None and current.state in {ModelState.READY, ModelState.LOADING,
                                                     ModelState.WARMING}:  # fmt: skip
            return current
        served = ServedVersion(key, ModelState.LOADING, observer=self._observer.for_version(key))
        self._versions[key] = served
        self._reroute(name)
        loop = asyncio.get_running_loop()
        source = source or self._source()
        try:
            model, batching, aliases = await loop.run_in_executor(
                self._executor, source.load, name, version
            )
            served.model, served.aliases = model, tuple(aliases)
            served.state = ModelState.WARMING
            await loop.run_in_executor(self._executor, _warm_up, model)
        except Exception as exc:  # a broken artifact must not take the server down
            error = (
                exc
                if isinstance(exc, DomainError)
                else FailedPrecondition(
                    f"{key} failed to load or warm up: {type(exc).__name__}: {exc}"
                )
            )
            served.state, served.reason = ModelState.FAILED, error.message
            logger.error("%s failed to load: %s", key, error.message)
            if raise_on_failure:
                raise error from None
            return served
        served.batcher = self._batcher_type(model.predict, self._executor,
                                            batching or self._batching, served.observer,
                                            str(key))  # fmt: skip
        served.state, served.ready_time = ModelState.READY, time.time()
        self._batching_changed()
        logger.info("%s ready (batch ≤ %d rows)", key, served.policy.max_batch_size)
        return served

    def set_aliases(self, name: str, aliases: dict[str, int]) -> None:
        """Point ``name``'s aliases at loaded versions, all at once: a request resolves
        either before or after the move, and one that resolved the old version finishes
        on it (its batcher drains before an unload)."""
        for served in (v for k, v in self._versions.items() if k.name == name):
            served.aliases = tuple(
                sorted(a for a, version in aliases.items() if version == served.key.version)
            )

    async def unload_model(self, name: str, version: int | None) -> list[ServedVersion]:
        """UnloadModel / RepositoryModelUnload (registry mode: the follower also stops
        loading the version, see ``RegistryFollower.unload``)."""
        if self._manager is not None:
            return await self._manager.unload(name, version)
        return await self.unload(name, version)

    async def unload(self, name: str, version: int | None) -> list[ServedVersion]:
        """Unload one or every version of ``name`` after queued requests finish."""
        chosen = [v for v in self.versions(name) if version in (None, 0, v.key.version)]
        if not chosen:
            raise NotFound(
                f"model {name!r} is not loaded" + (f" at version {version}" if version else "")
            )
        for served in chosen:
            served.state = ModelState.UNLOADING
            self._expected.discard(served.key)
            if served.batcher is not None:
                await served.batcher.close()
            self._versions.pop(served.key, None)
            self._reroute(served.key.name)
        self._batching_changed()
        return chosen

    def _batching_changed(self) -> None:
        self.fills_batches = any(v.policy.max_wait > 0 for v in self._versions.values())

    async def close(self) -> None:
        for served in list(self._versions.values()):
            if served.batcher is not None:
                await served.batcher.close()

    def _source(self) -> ModelDirectory:
        if self._directory is None:
            raise FailedPrecondition("no model directory configured (--model-dir)")
        return self._directory


_READY = ModelState.READY


class _Recorded:
    """Times what runs inside it as one request of ``served`` (stats and metrics)."""

    __slots__ = ("_only_failure", "_served", "_started")

    def __init__(
        self, served: ServedVersion, started: float, *, only_failure: bool = False
    ) -> None:
        self._served = served
        self._started = started
        self._only_failure = only_failure

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        ok = kind is None
        if ok and self._only_failure:
            return
        elapsed = time.perf_counter() - self._started
        self._served.stats.record(elapsed, ok)
        self._served.observer.request(elapsed, ok)


def _called_beside(model: LoadedModel, batcher: ThreadBatcher) -> bool:
    """A light model whose batches do not wait to fill: called at once, beside the queue."""
    return model.light and batcher.policy.max_wait <= 0


def _version_of(served: ServedVersion) -> int:
    return served.key.version


def _warm_up(model: LoadedModel) -> None:
    """A few predictions on the stored example (or zeros): first-call costs paid now."""
    import numpy as np

    example = model.input_example
    if example is None or example.size == 0:
        example = np.zeros((1, len(model.signature.features)))
    example = example.reshape(-1, len(model.signature.features))
    for _ in range(WARMUP_ROUNDS):
        model.predict(example)
        model.predict(example[:1])
