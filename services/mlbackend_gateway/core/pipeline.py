"""The online inference pipeline: variant → version → one feature read → serving.

One call of :meth:`InferencePipeline.predict` handles one entity or a batch: inputs are
grouped by experiment variant, and each group costs one feature read and one serving
call. Records go to the record queue; shadow variants run as background tasks after
the caller's answer is ready and never change it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlbackend_clients import propagation
from mlbackend_gateway.core.experiments import Experiment, ExperimentRouter, Variant, assign
from mlbackend_gateway.core.features import assemble, caller_error, check_request_features
from mlbackend_gateway.core.limits import InFlightLimit
from mlbackend_gateway.core.model import (
    FailedInput,
    FeatureTable,
    FieldPath,
    ModelOutput,
    ModelVersionInfo,
    PredictionInput,
    PredictionRecord,
    PredictionResult,
    Scalar,
    VersionSelector,
)
from mlbackend_gateway.core.ports import FeatureReader, Scorer, ScoringRefused
from mlbackend_gateway.core.records import RecordQueue
from mlbackend_gateway.core.versions import VersionResolver
from mlbackend_runtime.errors import DomainError, FailedPrecondition, FieldViolation, InvalidInput

logger = logging.getLogger("mlbackend.gateway")

MAX_BATCH = 1000


@dataclass(frozen=True)
class PipelineLimits:
    max_in_flight: int = 256
    max_shadow_tasks: int = 64
    shadow_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class _Route:
    variant: str = ""
    experiment: str = ""
    selector: VersionSelector = field(default_factory=VersionSelector)


class ShadowRunner:
    """Background scoring of shadow variants, bounded; overflow is dropped and counted."""

    def __init__(self, limit: int, dropped: Callable[[int], None]) -> None:
        self._limit = limit
        self._dropped = dropped
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, make: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        if len(self._tasks) >= self._limit:
            self._dropped(1)
            return False
        task = asyncio.get_running_loop().create_task(make())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class InferencePipeline:
    def __init__(
        self,
        resolver: VersionResolver,
        features: FeatureReader,
        scorer: Scorer,
        router: ExperimentRouter,
        records: RecordQueue,
        limits: PipelineLimits,
        shadow_dropped: Callable[[int], None],
    ) -> None:
        self.resolver = resolver
        self._features = features
        self._scorer = scorer
        self._router = router
        self._records = records
        self._limits = limits
        self.in_flight = InFlightLimit(limits.max_in_flight)
        self.shadows = ShadowRunner(limits.max_shadow_tasks, shadow_dropped)

    async def predict(
        self,
        model: str,
        selector: VersionSelector,
        inputs: Sequence[PredictionInput],
        *,
        batch: bool = False,
    ) -> list[PredictionResult]:
        """Predictions in input order (all or nothing)."""
        outputs = await self._predict(model, selector, inputs, batch=batch, partial=False)
        return [r for r in outputs if isinstance(r, PredictionResult)]

    async def predict_partial(
        self, model: str, selector: VersionSelector, inputs: Sequence[PredictionInput]
    ) -> list[PredictionResult | FailedInput]:
        """A batch's predictions in input order, where an input whose own values fail
        gets its error instead (:func:`_blame`); an error that is not one input's still
        fails them all."""
        return await self._predict(model, selector, inputs, batch=True, partial=True)

    async def _predict(
        self,
        model: str,
        selector: VersionSelector,
        inputs: Sequence[PredictionInput],
        *,
        batch: bool,
        partial: bool,
    ) -> list[PredictionResult | FailedInput]:
        path: FieldPath = (lambda i: f"inputs[{i}]") if batch else (lambda i: "input")
        _validate(model, selector, inputs, path, batch)
        async with self.in_flight:
            experiment = await self._router.running(model) if selector.is_default else None
            groups = _route(experiment, selector, inputs)
            outputs: list[PredictionResult | FailedInput | None] = [None] * len(inputs)
            leg = self._partial_leg if partial else self._leg
            legs = [
                leg(model, route, [inputs[i] for i in positions], positions, path)
                for route, positions in groups.items()
            ]
            for positions, results in zip(groups.values(), await _all(legs), strict=True):
                for position, result in zip(positions, results, strict=True):
                    outputs[position] = result
        if experiment is not None and experiment.shadow_variants:
            for variant in experiment.shadow_variants:
                self._shadow(model, experiment, variant, inputs, partial=partial)
        return [r for r in outputs if r is not None]

    async def _partial_leg(
        self,
        model: str,
        route: _Route,
        inputs: Sequence[PredictionInput],
        positions: Sequence[int],
        path: FieldPath,
        *,
        shadow: bool = False,
    ) -> list[PredictionResult | FailedInput]:
        """:meth:`_leg`, trying again without the inputs its error names one by one,
        until the rest is predicted. Each round drops at least one input; a feature
        store that lists at most 50 problems per answer may take a few rounds."""
        outcomes: dict[int, PredictionResult | FailedInput] = {}
        keep = list(range(len(inputs)))
        while keep:
            try:
                results = await self._leg(
                    model,
                    route,
                    [inputs[k] for k in keep],
                    [positions[k] for k in keep],
                    path,
                    shadow=shadow,
                    blame=True,
                )
            except DomainError as exc:
                at = {positions[k]: k for k in keep}
                blamed = _blame(exc, at.keys())
                if not blamed:
                    raise
                for position, error in blamed.items():
                    outcomes[at[position]] = FailedInput(
                        model, route.variant, route.experiment, error
                    )
                keep = [k for k in keep if positions[k] not in blamed]
                continue
            outcomes.update(zip(keep, results, strict=True))
            break
        return [outcomes[k] for k in range(len(inputs))]

    async def _leg(
        self,
        model: str,
        route: _Route,
        inputs: Sequence[PredictionInput],
        positions: Sequence[int],
        path: FieldPath,
        *,
        shadow: bool = False,
        blame: bool = False,
    ) -> list[PredictionResult | FailedInput]:
        """One feature read and one serving call for ``inputs`` (caller positions
        ``positions``). A failure is recorded for every input, or with ``blame`` only
        for those its error names one by one, when it names them so."""
        started = time.perf_counter()
        # A batch's field paths refer to the caller's positions, not the group's.
        group_path: FieldPath = lambda i: path(positions[i])  # noqa: E731
        version = await self.resolver.resolve(model, route.selector)
        attempt = _Attempt(model, route, shadow, inputs, started)
        try:
            check_request_features(version, inputs, group_path)
            table = await self._read(version, inputs, group_path)
            rows = assemble(version, table, inputs, group_path)
            try:
                scored = await self._scorer.score(model, version.version, [r.vector for r in rows])
            except ScoringRefused as refusal:
                raise caller_error(refusal, inputs, rows, group_path) from None
        except Exception as exc:
            # A failed attempt is monitored too: it counts against its version's error rate.
            blamed = _blame(exc, positions) if blame else {}
            for position, item in zip(positions, inputs, strict=True):
                if blamed and position not in blamed:
                    continue  # tried again without the inputs the error names
                failed = attempt.record(
                    str(uuid.uuid4()),
                    item,
                    version.version,
                    version.feature_service,
                    error=blamed.get(position, exc),
                )
                self._records.offer(failed)
            raise
        feature_service = table.feature_service or version.feature_service
        results: list[PredictionResult | FailedInput] = []
        for item, row, output in zip(inputs, rows, scored.rows, strict=True):
            result = PredictionResult(
                prediction_id=str(uuid.uuid4()),
                model=model,
                version=scored.version,
                variant=route.variant,
                experiment=route.experiment,
                prediction=output,
                output=scored.output,
                features=row.outcomes,
                feature_service=feature_service,
            )
            results.append(result)
            self._records.offer(
                attempt.record(
                    result.prediction_id,
                    item,
                    scored.version,
                    feature_service,
                    features={o.name: o.value for o in row.outcomes},
                    output=output,
                )
            )
        return results

    async def _read(
        self, version: ModelVersionInfo, inputs: Sequence[PredictionInput], path: FieldPath
    ) -> FeatureTable:
        if not version.feature_service and not version.feature_refs:
            return FeatureTable((), ())
        missing = [
            FieldViolation(f"{path(i)}.entity_key", "required: the model reads stored features")
            for i, item in enumerate(inputs)
            if not item.entity_key
        ]
        if missing:
            raise InvalidInput("entity key missing", missing)
        return await self._features.read(version, inputs, path)

    def _shadow(
        self,
        model: str,
        experiment: Experiment,
        variant: Variant,
        inputs: Sequence[PredictionInput],
        *,
        partial: bool,
    ) -> None:
        """Score ``inputs`` with a shadow variant in the background. For a batch asking
        for partial results the shadow peels the inputs its errors name, as the
        caller's legs do, so monitoring sees the shadow's verdict on each input."""
        route = _Route(variant.name, experiment.name, variant.version)
        leg = self._partial_leg if partial else self._leg
        parent = propagation.current()
        request_id = parent.request_id if parent is not None else propagation.new_request_id()
        timeout = self._limits.shadow_timeout_seconds

        async def run() -> None:
            # Its own deadline: the caller's may end as soon as it has its answer.
            propagation.bind(propagation.CallContext(request_id, time.monotonic() + timeout))
            try:
                await asyncio.wait_for(
                    leg(
                        model,
                        route,
                        inputs,
                        range(len(inputs)),
                        lambda i: f"inputs[{i}]",
                        shadow=True,
                    ),
                    timeout,
                )
            except (DomainError, TimeoutError) as exc:
                logger.info("shadow variant %s of %s failed: %s", variant.name, model, exc)
            except Exception:
                logger.exception("shadow variant %s of %s failed", variant.name, model)

        self.shadows.submit(run)


@dataclass(frozen=True)
class _Attempt:
    """What every record of one leg shares; ``record`` stamps the time and latency."""

    model: str
    route: _Route
    shadow: bool
    inputs: Sequence[PredictionInput]
    started: float
    request_id: str = field(default_factory=lambda: _request_id())

    def record(
        self,
        prediction_id: str,
        item: PredictionInput,
        version: int,
        feature_service: str,
        *,
        features: Mapping[str, Scalar] | None = None,
        output: ModelOutput | None = None,
        error: Exception | None = None,
    ) -> PredictionRecord:
        return PredictionRecord(
            prediction_id=prediction_id,
            request_id=self.request_id,
            time=datetime.now(UTC),
            model=self.model,
            version=version,
            variant=self.route.variant,
            experiment=self.route.experiment,
            shadow=self.shadow,
            entity_key=item.entity_key,
            features=features or {},
            output=output,
            latency_seconds=time.perf_counter() - self.started,
            feature_service=feature_service,
            error=error,
        )


_INPUT = re.compile(r"inputs\[(\d+)\]")


def _blame(exc: BaseException, positions: Iterable[int]) -> dict[int, DomainError]:
    """The inputs of a batch ``exc`` names one by one, each with its own share of it:
    every field (InvalidInput) or subject (FailedPrecondition) names ``inputs[i]``, i
    one of ``positions``. Empty when some part of the error names no such input
    (unknown model, a dependency): then it is everyone's."""
    if isinstance(exc, InvalidInput):
        fields = _by_input(exc.violations, [v.field for v in exc.violations], positions)
        return {i: InvalidInput(_first(v[0].field, v), v) for i, v in fields.items()}
    if isinstance(exc, FailedPrecondition):
        unmet = _by_input(exc.violations, [v.subject for v in exc.violations], positions)
        return {i: FailedPrecondition(_first(v[0].subject, v), v) for i, v in unmet.items()}
    return {}


def _by_input(
    violations: Sequence[Any], paths: Sequence[str], positions: Iterable[int]
) -> dict[int, list[Any]]:
    """``violations`` by the input their ``paths`` name; empty if one names none of
    ``positions``."""
    mine = set(positions)
    named: dict[int, list[Any]] = {}
    for violation, path in zip(violations, paths, strict=True):
        match = _INPUT.match(path)
        if match is None or int(match.group(1)) not in mine:
            return {}
        named.setdefault(int(match.group(1)), []).append(violation)
    return named


def _first(where: str, violations: Sequence[Any]) -> str:
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return f"{where}: {violations[0].description}{more}"


def _request_id() -> str:
    context = propagation.current()
    return context.request_id if context is not None else propagation.new_request_id()


def _validate(
    model: str,
    selector: VersionSelector,
    inputs: Sequence[PredictionInput],
    path: FieldPath,
    batch: bool,
) -> None:
    violations: list[FieldViolation] = []
    if not model:
        violations.append(FieldViolation("model", "required"))
    if selector.version is not None and selector.version < 1:
        violations.append(FieldViolation("version.version", "must be >= 1"))
    if not inputs:
        violations.append(FieldViolation("inputs" if batch else "input", "required"))
    if len(inputs) > MAX_BATCH:
        violations.append(FieldViolation("inputs", f"at most {MAX_BATCH} per call"))
    if violations:
        raise InvalidInput(f"{violations[0].field}: {violations[0].description}", violations)


def _route(
    experiment: Experiment | None, selector: VersionSelector, inputs: Sequence[PredictionInput]
) -> dict[_Route, list[int]]:
    groups: dict[_Route, list[int]] = {}
    if experiment is None:
        groups[_Route(selector=selector)] = list(range(len(inputs)))
        return groups
    for i, item in enumerate(inputs):
        variant = assign(experiment, item.entity_key)
        route = _Route(variant.name, experiment.name, variant.version)
        groups.setdefault(route, []).append(i)
    return groups


async def _all(
    legs: Sequence[Coroutine[Any, Any, list[PredictionResult | FailedInput]]],
) -> list[list[PredictionResult | FailedInput]]:
    if len(legs) == 1:
        return [await legs[0]]
    return list(await asyncio.gather(*legs))
