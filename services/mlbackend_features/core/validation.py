"""Checks of written rows and of the keys and times a read names.

A batch is checked completely before anything is stored: every violation of every
row is collected, so the writer can fix the whole batch in one go.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
from datetime import datetime

from mlbackend_features.core import codec
from mlbackend_features.core.model import (
    MAX_KEY_STRING_BYTES,
    MAX_STRING_BYTES,
    MAX_TIME_US,
    MIN_TIME_US,
    DType,
    EntityKey,
    Feature,
    FeatureView,
    JoinKey,
    NanPolicy,
    Record,
    RequestInput,
    RowViolation,
    Scalar,
    WriteBatch,
    datetime_to_us,
)
from mlbackend_runtime.errors import FieldViolation, InvalidInput

MAX_REPORTED_VIOLATIONS = 50
"""Violations listed in an error's details: trailing metadata must stay small (gRPC's
default limit is 8 KiB); the message states the total."""


def kind_of(value: Scalar) -> str:
    """The dtype a Python value carries, as a user would name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return DType.BOOL
    if isinstance(value, int):
        return DType.INT64
    if isinstance(value, float):
        return DType.DOUBLE
    if isinstance(value, str):
        return DType.STRING
    return DType.TIMESTAMP


def check_time(event_us: int | None) -> str | None:
    if event_us is None:
        return "is required"
    if not MIN_TIME_US <= event_us < MAX_TIME_US:
        return "must be between 1900-01-01 and 2200-01-01 UTC"
    return None


def coerce(dtype: DType, value: Scalar) -> tuple[Scalar, str | None]:
    """The value as stored for ``dtype`` (ints widen to doubles), or why it does not fit."""
    if value is None:
        return None, None
    kind = kind_of(value)
    if kind == dtype:
        return value, None
    if dtype is DType.DOUBLE and kind == DType.INT64:
        return float(value), None  # type: ignore[arg-type]
    return None, f"expected {dtype}, got {kind}"


def check_value(feature: Feature | RequestInput, value: Scalar) -> tuple[Scalar, str | None]:
    """The value to store for ``feature`` (or take for a request input), or the reason
    it is refused."""
    rules = feature.constraints
    value, problem = coerce(feature.dtype, value)
    if problem:
        return None, problem
    if isinstance(value, float) and not math.isfinite(value):
        if rules.nan_policy is NanPolicy.REJECT:
            return None, f"{value} is not allowed (nan_policy REJECT)"
        if rules.nan_policy is NanPolicy.AS_NULL:
            value = None
        else:
            return value, None
    if value is None:
        return None, ("must not be null" if rules.not_null else None)
    if isinstance(value, str):
        size = len(value.encode())
        if size > MAX_STRING_BYTES:
            return None, f"string of {size} bytes exceeds the limit of {MAX_STRING_BYTES}"
        if rules.max_length and len(value) > rules.max_length:
            return None, f"longer than max_length {rules.max_length}"
    elif isinstance(value, datetime):
        if check_time(datetime_to_us(value)):
            return None, "timestamp must be between 1900-01-01 and 2200-01-01 UTC"
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if rules.min is not None and value < rules.min:
            return None, f"{value} is below min {rules.min}"
        if rules.max is not None and value > rules.max:
            return None, f"{value} is above max {rules.max}"
    if rules.allowed_values and value not in rules.allowed_values:
        return (
            None,
            f"{value!r} is not one of the allowed values ({_listing(rules.allowed_values)})",
        )
    return value, None


def _listing(values: Sequence[Scalar], shown: int = 10) -> str:
    """The first ``shown`` values, and how many more there are."""
    text = ", ".join(map(repr, values[:shown]))
    return text + (f", … {len(values) - shown} more" if len(values) > shown else "")


def key_values(join_keys: Sequence[JoinKey], key: EntityKey) -> tuple[list[Scalar], list[str]]:
    """The key's values in join-key order, and a ``name: problem`` per defect."""
    problems: list[str] = []
    values: list[Scalar] = []
    for join_key in join_keys:
        if join_key.name not in key:
            problems.append(f"{join_key.name}: join key is missing")
            continue
        value = key[join_key.name]
        if value is None or kind_of(value) != join_key.dtype:
            problems.append(f"{join_key.name}: expected {join_key.dtype}, got {kind_of(value)}")
        elif isinstance(value, str) and len(value.encode()) > MAX_KEY_STRING_BYTES:
            problems.append(f"{join_key.name}: longer than {MAX_KEY_STRING_BYTES} bytes")
        values.append(value)
    return values, problems


def validate_batch(
    view: FeatureView, join_keys: Sequence[JoinKey], batch: WriteBatch
) -> tuple[list[Record], list[RowViolation]]:
    """The batch as storage records, or every violation found in it."""
    violations: list[RowViolation] = []

    def batch_level(field: str, feature: str, description: str) -> None:
        violations.append(RowViolation(-1, feature, description, field))

    features: list[Feature | None] = []
    seen: set[str] = set()
    for i, name in enumerate(batch.features):
        feature = view.feature(name)
        if feature is None:
            batch_level(f"batch.features[{i}]", name, f"unknown feature of view {view.name!r}")
        elif name in seen:
            batch_level(f"batch.features[{i}]", name, "listed twice")
        seen.add(name)
        features.append(feature)
    omitted = [f for f in view.features if f.name not in seen]
    for feature in omitted:
        if feature.constraints.not_null:
            batch_level("batch.features", feature.name, "not-null feature missing from the batch")
    if not batch.rows:
        batch_level("batch.rows", "", "a batch needs at least one row")

    known_keys = {k.name for k in join_keys}
    records: list[Record] = []
    for r, row in enumerate(batch.rows):
        path = f"batch.rows[{r}]"
        key, key_problems = key_values(join_keys, row.entity_key)
        key_problems += [
            f"{name}: not a join key of view {view.name!r}"
            for name in row.entity_key
            if name not in known_keys
        ]
        for problem in key_problems:
            name = problem.partition(":")[0]
            violations.append(
                RowViolation(r, name, problem.partition(": ")[2], f"{path}.entity_key.{name}")
            )
        time_problem = check_time(row.event_us)
        if time_problem:
            violations.append(RowViolation(r, "event_time", time_problem, f"{path}.event_time"))
        if len(row.values) != len(features):
            violations.append(
                RowViolation(
                    r,
                    "",
                    f"expected {len(features)} values (one per batch feature), "
                    f"got {len(row.values)}",
                    f"{path}.values",
                )
            )
            continue
        stored: dict[str, Scalar] = {}
        for feature, raw in zip(features, row.values, strict=True):
            if feature is None:
                continue
            value, refused = check_value(feature, raw)
            if refused:
                violations.append(
                    RowViolation(r, feature.name, refused, f"{path}.values.{feature.name}")
                )
            stored[feature.name] = value
        for feature in omitted:
            stored[feature.name] = None
        if not violations and row.event_us is not None:
            records.append(Record(codec.encode_key(key), row.event_us, codec.encode_values(stored)))
    return ([] if violations else records), violations


class BatchRejected(InvalidInput):
    """A refused batch: the field violations (capped) plus every row violation."""

    def __init__(
        self, message: str, violations: Sequence[FieldViolation], rows: Sequence[RowViolation]
    ) -> None:
        super().__init__(message, violations, total=len(rows))
        self.row_violations = tuple(rows)


def rejection(violations: Sequence[RowViolation], what: str = "batch") -> BatchRejected:
    """One error listing the violations (the first :data:`MAX_REPORTED_VIOLATIONS`)."""
    rows = {v.row_index for v in violations if v.row_index >= 0}
    listed = violations[:MAX_REPORTED_VIOLATIONS]
    message = f"{what} rejected: {len(violations)} violation(s) in {len(rows)} row(s)"
    if len(violations) > len(listed):
        message += f"; the first {len(listed)} are listed"
    first = listed[0]
    message += f"; first: {first.field}: {first.description}"
    return BatchRejected(
        message, [FieldViolation(v.field, v.description) for v in listed], violations
    )


def entity_strings(
    join_keys: Sequence[JoinKey],
    keys: Sequence[EntityKey],
    field: str,
    violations: list[FieldViolation] | None = None,
    member: str = "",
) -> list[str]:
    """Encoded keys for a read, in request order. Every defect is appended to
    ``violations``; without that list, they raise one InvalidInput. Key ``i`` is named
    ``{field}[i]{member}`` (``member`` ".entity_key" for rows that hold a key)."""
    if len(join_keys) == 1 and join_keys[0].dtype is DType.INT64:
        simple = _int_key_strings(join_keys[0].name, keys)
        if simple is not None:
            return simple
    out: list[str] = []
    found: list[FieldViolation] = [] if violations is None else violations
    for i, key in enumerate(keys):
        values, problems = key_values(join_keys, key)
        for problem in problems:
            name, _, description = problem.partition(": ")
            found.append(FieldViolation(f"{field}[{i}]{member}.join_keys.{name}", description))
        # A key with a defect is never read (the violations fail the read), and a value
        # of the wrong kind (a timestamp, say) may not even encode.
        out.append("" if problems else codec.encode_key(values))
    if violations is None:
        raise_invalid(found)
    return out


def raise_invalid(violations: Sequence[FieldViolation]) -> None:
    """One InvalidInput naming every violation (the first :data:`MAX_REPORTED_VIOLATIONS`
    as details), each field once; nothing when there are none."""
    if not violations:
        return
    unique = list(dict.fromkeys(violations))
    first = unique[0]
    raise InvalidInput(
        f"{len(unique)} invalid input(s); first: {first.field}: {first.description}",
        unique[:MAX_REPORTED_VIOLATIONS],
        total=len(unique),
    )


def _int_key_strings(name: str, keys: Sequence[EntityKey]) -> list[str] | None:
    """The common case of one int64 join key, every key valid; None sends the caller
    to the general path (which also reports the defects)."""
    values = [key.get(name) for key in keys]
    if not all(type(value) is int for value in values):
        return None
    return list(map(codec.encode_int_key, values))  # type: ignore[arg-type]  # ints, checked


def check_unknown_keys(
    keys: Sequence[Mapping[str, Scalar]],
    known: Set[str],
    field: str,
    violations: list[FieldViolation],
    member: str = "",
) -> None:
    """Refuse join keys no requested view uses (usually a typo)."""
    for i, key in enumerate(keys):
        for name in key:
            if name not in known:
                violations.append(
                    FieldViolation(
                        f"{field}[{i}]{member}.join_keys.{name}",
                        "not a join key of any requested view",
                    )
                )
