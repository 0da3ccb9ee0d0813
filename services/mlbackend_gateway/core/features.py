"""From a feature read to the model's input vector, applying the missing-feature policy.

The feature store has already applied the feature service's transforms; this module
only lines its columns (and request-time inputs the model takes directly) up with the
version's signature and decides what happens to inputs that are not present.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from mlbackend_gateway.core.model import (
    DType,
    FeatureAction,
    FeatureOutcome,
    FeatureStatus,
    FeatureTable,
    FieldPath,
    InputFeature,
    ModelVersionInfo,
    PredictionInput,
    Scalar,
    StoredValue,
)
from mlbackend_gateway.core.ports import ScoringRefused
from mlbackend_runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidInput,
    PreconditionViolation,
)


@dataclass(frozen=True)
class AssembledRow:
    vector: tuple[Scalar, ...]
    outcomes: tuple[FeatureOutcome, ...]


def fits(value: Scalar, dtype: DType) -> bool:
    """Whether a value is acceptable for an input of ``dtype`` (null is checked elsewhere)."""
    if value is None:
        return True
    if dtype is DType.DOUBLE:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if dtype is DType.INT64:
        return isinstance(value, int) and not isinstance(value, bool)
    if dtype is DType.BOOL:
        return isinstance(value, bool)
    if dtype is DType.STRING:
        return isinstance(value, str)
    return isinstance(value, datetime)


@functools.lru_cache(maxsize=256)
def _column_index(columns: tuple[str, ...]) -> Mapping[str, int]:
    # The same columns come back on every read of one feature service: index them once.
    index = {name: i for i, name in enumerate(columns)}
    # A model may name a stored ref `view:feature` by its feature name alone.
    short: dict[str, list[int]] = {}
    for i, name in enumerate(columns):
        if ":" in name:
            short.setdefault(name.split(":", 1)[1], []).append(i)
    for name, positions in short.items():
        if name not in index and len(positions) == 1:
            index[name] = positions[0]
    return index


def check_request_features(
    version: ModelVersionInfo, inputs: Sequence[PredictionInput], path: FieldPath
) -> None:
    """Request-time values the model takes directly must have the signature's type.

    Not checked here for a version with a feature service: the store checks every
    request input against the service's declared types, and its one error then names
    each wrong, missing or unknown input and entity key together."""
    if version.feature_service or not any(item.request_features for item in inputs):
        return
    by_name = {f.name: f for f in version.signature}
    violations: list[FieldViolation] = []
    for i, item in enumerate(inputs):
        for name, value in item.request_features.items():
            spec = by_name.get(name)
            if spec is not None and not fits(value, spec.dtype):
                violations.append(
                    FieldViolation(
                        f"{path(i)}.request_features.{name}",
                        f"must be {spec.dtype.value}, got {type(value).__name__}",
                    )
                )
    if violations:
        raise InvalidInput(f"{len(violations)} request feature(s) of the wrong type", violations)


def assemble(
    version: ModelVersionInfo,
    table: FeatureTable,
    inputs: Sequence[PredictionInput],
    path: FieldPath,
) -> list[AssembledRow]:
    """One vector per input in signature order; FAILED_PRECONDITION names every input
    that is missing and has neither a declared default nor a nullable signature."""
    index = _column_index(table.columns)
    rows: list[AssembledRow] = []
    missing: list[PreconditionViolation] = []
    for i, item in enumerate(inputs):
        stored = table.rows[i] if i < len(table.rows) else ()
        vector: list[Scalar] = []
        outcomes: list[FeatureOutcome] = []
        for spec in version.signature:
            cell = _cell(spec, index, stored, item.request_features)
            outcome = _apply_policy(spec, cell, version.defaults)
            if outcome is None:
                missing.append(
                    PreconditionViolation(
                        f"FEATURE_{cell.status.name}",
                        f"{path(i)}/{spec.name}",
                        f"no value ({cell.status.name}) and no declared default",
                    )
                )
                continue
            outcomes.append(outcome)
            vector.append(outcome.value)
        rows.append(AssembledRow(tuple(vector), tuple(outcomes)))
    if missing:
        shown = "; ".join(f"{v.subject} ({v.type.removeprefix('FEATURE_')})" for v in missing[:20])
        more = f"; … {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FailedPrecondition(
            f"model {version.model!r} version {version.version} has no value and no declared "
            f"default for: {shown}{more}",
            missing,
        )
    return rows


def _cell(
    spec: InputFeature,
    index: Mapping[str, int],
    stored: Sequence[StoredValue],
    request: Mapping[str, Scalar],
) -> StoredValue:
    position = index.get(spec.name)
    if position is not None and position < len(stored):
        return stored[position]
    if spec.name in request:
        value = request[spec.name]
        return StoredValue(value, FeatureStatus.REQUEST_INPUT if value is not None
                           else FeatureStatus.NULL_VALUE)  # fmt: skip
    return StoredValue(None, FeatureStatus.NOT_FOUND)


def _apply_policy(
    spec: InputFeature, cell: StoredValue, defaults: Mapping[str, Scalar]
) -> FeatureOutcome | None:
    if cell.value is not None and not cell.status.missing:
        return FeatureOutcome(spec.name, cell.status, FeatureAction.NONE, cell.value)
    if spec.name in defaults:
        return FeatureOutcome(spec.name, cell.status, FeatureAction.DEFAULT_FILLED,
                              defaults[spec.name])  # fmt: skip
    if spec.nullable:
        return FeatureOutcome(spec.name, cell.status, FeatureAction.NULL_PASSED, None)
    return None


def caller_error(
    refusal: ScoringRefused,
    inputs: Sequence[PredictionInput],
    rows: Sequence[AssembledRow],
    path: FieldPath,
) -> Exception:
    """Serving's refusal of some values, as the caller's error where the caller's values
    caused it: INVALID_ARGUMENT naming the request features. A refused value the caller
    sent as it is names that feature; one the store computed names the request's
    non-finite numbers (NaN, infinities: what serving refuses), which fed it. A refusal
    the request's values do not explain (a NaN stored in a view, say) is not the
    caller's: it stays FAILED_PRECONDITION."""
    violations: dict[str, str] = {}
    for refused in refusal.refused:
        if refused.row >= len(rows):
            continue
        where = f"{path(refused.row)}.request_features"
        outcome = next((o for o in rows[refused.row].outcomes if o.name == refused.feature), None)
        if outcome is not None and outcome.status is FeatureStatus.REQUEST_INPUT:
            violations[f"{where}.{refused.feature}"] = refused.description
            continue
        for name, value in inputs[refused.row].request_features.items():
            if isinstance(value, float) and not math.isfinite(value):
                violations.setdefault(
                    f"{where}.{name}",
                    f"{value} is not allowed: the model's input {refused.feature}, computed "
                    f"from it, was refused ({refused.description})",
                )
    if not violations:
        return refusal
    field, description = next(iter(violations.items()))
    return InvalidInput(
        f"{len(violations)} request feature value(s) the model does not take; first: "
        f"{field}: {description}",
        [FieldViolation(f, d) for f, d in violations.items()],
    )
