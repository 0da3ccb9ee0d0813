"""Declarative on-demand transforms, applied by the store inside online and historical reads.

A feature service is compiled once into a :class:`CompiledService`: its inputs are
type-checked, each transform becomes a step over a row's cells, and its output schema
is fixed. Training (historical reads) and serving (online reads) both run the same
steps, so they cannot skew.

Null handling: a transform whose input is null yields null, carrying the input's
status (NOT_FOUND / EXPIRED) so callers still see *why* a model input is missing.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mlbackend_features.core.model import (
    CATEGORICAL,
    MICROS,
    NUMERIC,
    Bucketize,
    Cell,
    Clip,
    DayOfWeek,
    Difference,
    DType,
    EpochSeconds,
    FeatureService,
    FeatureView,
    HashBucket,
    HourOfDay,
    Log1p,
    MinMaxScale,
    OneHot,
    OutputColumn,
    Product,
    Ratio,
    RequestInput,
    Scalar,
    StandardScale,
    Status,
    Transform,
    datetime_to_us,
)
from mlbackend_runtime.errors import FieldViolation, InvalidInput

Row = dict[str, Cell]
Step = Callable[[Row], None]

OTHER = "__other__"


@dataclass(frozen=True)
class StoredRef:
    ref: str
    view: str
    feature: str


@dataclass(frozen=True)
class CompiledService:
    """A feature service ready to read: stored refs, request inputs, steps, outputs."""

    service: FeatureService | None
    stored: tuple[StoredRef, ...]
    request_inputs: tuple[RequestInput, ...]
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]
    schema: tuple[OutputColumn, ...]

    def evaluate(self, row: Row) -> list[Cell]:
        for step in self.steps:
            step(row)
        return [row[name] for name in self.outputs]


def parse_ref(ref: str) -> tuple[str, str] | None:
    view, sep, feature = ref.partition(":")
    return (view, feature) if sep and view and feature else None


def compile_refs(
    refs: Sequence[str], views: Mapping[str, FeatureView], field: str
) -> CompiledService:
    """A plain read of feature refs (no transforms)."""
    stored, schema = _stored(refs, views, field)
    return CompiledService(None, stored, (), (), tuple(refs), schema)


def _stored(
    refs: Sequence[str], views: Mapping[str, FeatureView], field: str
) -> tuple[tuple[StoredRef, ...], tuple[OutputColumn, ...]]:
    violations: list[FieldViolation] = []
    stored: list[StoredRef] = []
    schema: list[OutputColumn] = []
    seen: set[str] = set()
    for i, ref in enumerate(refs):
        parsed = parse_ref(ref)
        view = views.get(parsed[0]) if parsed else None
        feature = view.feature(parsed[1]) if view and parsed else None
        if parsed is None:
            violations.append(FieldViolation(f"{field}[{i}]", "expected 'view:feature'"))
        elif view is None:
            violations.append(
                FieldViolation(f"{field}[{i}]", f"unknown feature view {parsed[0]!r}")
            )
        elif feature is None:
            violations.append(
                FieldViolation(f"{field}[{i}]", f"view {view.name!r} has no feature {parsed[1]!r}")
            )
        elif ref in seen:
            violations.append(FieldViolation(f"{field}[{i}]", "listed twice"))
        else:
            seen.add(ref)
            stored.append(StoredRef(ref, view.name, feature.name))
            schema.append(
                OutputColumn(name=ref, dtype=feature.dtype, description=feature.description)
            )
    if not refs:
        violations.append(FieldViolation(field, "name at least one feature"))
    if violations:
        raise InvalidInput(
            f"invalid feature refs; first: {violations[0].field}: {violations[0].description}",
            violations,
        )
    return tuple(stored), tuple(schema)


def compile_service(
    service: FeatureService, views: Mapping[str, FeatureView], field: str = "feature_service"
) -> CompiledService:
    """Type-check a feature service against ``views``; every defect is a field violation."""
    stored, stored_schema = _stored(service.feature_refs, views, f"{field}.feature_refs")
    types: dict[str, DType] = {c.name: c.dtype for c in stored_schema}
    columns: dict[str, OutputColumn] = {c.name: c for c in stored_schema}
    violations: list[FieldViolation] = []
    inputs: list[RequestInput] = []
    for i, request_input in enumerate(service.request_inputs):
        if request_input.name in types:
            violations.append(FieldViolation(f"{field}.request_inputs[{i}].name", "name in use"))
        types[request_input.name] = request_input.dtype
        columns[request_input.name] = OutputColumn(
            name=request_input.name, dtype=request_input.dtype, nullable=request_input.nullable
        )
        inputs.append(request_input)
    steps: list[Step] = []
    transform_outputs: list[str] = []
    for i, transform in enumerate(service.transforms):
        path = f"{field}.transforms[{i}]"
        try:
            step, produced = _compile(transform, types, path)
        except InvalidInput as exc:
            violations.extend(exc.violations)
            continue
        for name, dtype in produced:
            if name in types:
                violations.append(FieldViolation(f"{path}.output", f"name {name!r} in use"))
            types[name] = dtype
            columns[name] = OutputColumn(name=name, dtype=dtype)
            transform_outputs.append(name)
        steps.append(step)
    outputs: list[str] = []
    for i, name in enumerate(service.outputs):
        expanded = [o for o in transform_outputs if o.startswith(f"{name}=")]
        if name in columns:
            outputs.append(name)
        elif expanded:
            outputs.extend(expanded)
        else:
            violations.append(FieldViolation(f"{field}.outputs[{i}]", f"unknown output {name!r}"))
    if not service.outputs:
        outputs = [s.ref for s in stored] + transform_outputs
    if violations:
        raise InvalidInput(
            f"invalid feature service {service.name!r}; first: "
            f"{violations[0].field}: {violations[0].description}",
            violations,
        )
    schema = tuple(columns[name] for name in outputs)
    return CompiledService(service, stored, tuple(inputs), tuple(steps), tuple(outputs), schema)


# --- the transforms ---------------------------------------------------------------------


def _missing(*cells: Cell) -> Cell | None:
    """The null result when any input is null, keeping the input's reason."""
    for cell in cells:
        if cell.value is None:
            reason = cell.status
            if reason not in (Status.NOT_FOUND, Status.EXPIRED):
                reason = Status.NULL_VALUE
            return Cell(None, reason, None)
    return None


def _number(value: Scalar) -> float:
    return float(value)  # type: ignore[arg-type]


def _category(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _need(types: Mapping[str, DType], name: str, allowed: frozenset[DType], field: str) -> DType:
    dtype = types.get(name)
    if dtype is None:
        raise InvalidInput.field(
            field, f"unknown input {name!r} (a feature ref, request input or earlier output)"
        )
    if dtype not in allowed:
        raise InvalidInput.field(
            field, f"input {name!r} is {dtype}; needs {' or '.join(sorted(allowed))}"
        )
    return dtype


def _unary(source: str, output: str, fn: Callable[[Scalar], Scalar]) -> Step:
    def step(row: Row) -> None:
        cell = row[source]
        missing = _missing(cell)
        if missing is not None:
            row[output] = missing
            return
        value = fn(cell.value)
        row[output] = Cell(value, Status.COMPUTED if value is not None else Status.NULL_VALUE, None)

    return step


def _binary(left: str, right: str, output: str, fn: Callable[[float, float], float]) -> Step:
    def step(row: Row) -> None:
        a, b = row[left], row[right]
        missing = _missing(a, b)
        row[output] = missing or Cell(fn(_number(a.value), _number(b.value)), Status.COMPUTED, None)

    return step


def _zone(name: str, field: str) -> tzinfo:
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput.field(field, f"unknown time zone {name!r}") from None


def _compile(
    t: Transform, types: Mapping[str, DType], path: str
) -> tuple[Step, list[tuple[str, DType]]]:
    out = t.output
    if not out:
        raise InvalidInput.field(f"{path}.output", "is required")
    if isinstance(t, StandardScale):
        _need(types, t.input, NUMERIC, f"{path}.standard_scale.input")
        if not (t.std > 0 and math.isfinite(t.std) and math.isfinite(t.mean)):
            raise InvalidInput.field(f"{path}.standard_scale.std", "must be finite and > 0")
        mean, std = t.mean, t.std
        return _unary(t.input, out, lambda x: (_number(x) - mean) / std), [(out, DType.DOUBLE)]
    if isinstance(t, MinMaxScale):
        _need(types, t.input, NUMERIC, f"{path}.min_max_scale.input")
        if not (math.isfinite(t.min) and math.isfinite(t.max) and t.max > t.min):
            raise InvalidInput.field(f"{path}.min_max_scale.max", "must be finite and > min")
        low, span = t.min, t.max - t.min
        return _unary(t.input, out, lambda x: (_number(x) - low) / span), [(out, DType.DOUBLE)]
    if isinstance(t, Log1p):
        _need(types, t.input, NUMERIC, f"{path}.log1p.input")

        def log1p(x: Scalar) -> Scalar:
            v = _number(x)
            return math.log1p(v) if v > -1 else None

        return _unary(t.input, out, log1p), [(out, DType.DOUBLE)]
    if isinstance(t, Clip):
        _need(types, t.input, NUMERIC, f"{path}.clip.input")
        if t.min is not None and t.max is not None and t.min > t.max:
            raise InvalidInput.field(f"{path}.clip.max", "must be >= min")
        low_bound = -math.inf if t.min is None else t.min
        high_bound = math.inf if t.max is None else t.max
        return _unary(t.input, out, lambda x: min(max(_number(x), low_bound), high_bound)), [
            (out, DType.DOUBLE)
        ]
    if isinstance(t, Bucketize):
        _need(types, t.input, NUMERIC, f"{path}.bucketize.input")
        bounds = list(t.boundaries)
        if not bounds or any(not a < b for a, b in itertools.pairwise(bounds)):
            raise InvalidInput.field(
                f"{path}.bucketize.boundaries", "need at least one, strictly ascending"
            )
        return _unary(t.input, out, lambda x: bisect.bisect_right(bounds, _number(x))), [
            (out, DType.INT64)
        ]
    if isinstance(t, OneHot):
        return _one_hot(t, types, path)
    if isinstance(t, HashBucket):
        _need(types, t.input, CATEGORICAL, f"{path}.hash_bucket.input")
        if t.num_buckets <= 0:
            raise InvalidInput.field(f"{path}.hash_bucket.num_buckets", "must be > 0")
        buckets, salt = t.num_buckets, t.salt.encode()
        return _unary(t.input, out, lambda x: stable_hash(salt, _category(x)) % buckets), [
            (out, DType.INT64)
        ]
    if isinstance(t, Product):
        _need(types, t.left, NUMERIC, f"{path}.product.left")
        _need(types, t.right, NUMERIC, f"{path}.product.right")
        return _binary(t.left, t.right, out, lambda a, b: a * b), [(out, DType.DOUBLE)]
    if isinstance(t, Ratio):
        _need(types, t.numerator, NUMERIC, f"{path}.ratio.numerator")
        _need(types, t.denominator, NUMERIC, f"{path}.ratio.denominator")
        default = t.default_value
        return _binary(
            t.numerator, t.denominator, out, lambda a, b: a / b if b != 0 else default
        ), [(out, DType.DOUBLE)]
    if isinstance(t, HourOfDay | DayOfWeek):
        kind = "hour_of_day" if isinstance(t, HourOfDay) else "day_of_week"
        _need(types, t.input, frozenset({DType.TIMESTAMP}), f"{path}.{kind}.input")
        zone = _zone(t.time_zone, f"{path}.{kind}.time_zone")
        if isinstance(t, HourOfDay):
            return _unary(t.input, out, lambda x: _local(x, zone).hour), [(out, DType.INT64)]
        return _unary(t.input, out, lambda x: _local(x, zone).weekday()), [(out, DType.INT64)]
    if isinstance(t, Difference):
        return _difference(t, types, path), [(out, DType.DOUBLE)]
    if isinstance(t, EpochSeconds):
        _need(types, t.input, _TIME, f"{path}.epoch_seconds.input")
        return _unary(t.input, out, _epoch_seconds), [(out, DType.DOUBLE)]
    raise InvalidInput.field(path, "unknown transform kind")


_TIME = frozenset({DType.TIMESTAMP})


def _epoch_seconds(value: Scalar) -> float:
    assert isinstance(value, datetime)
    return datetime_to_us(value) / MICROS


def _difference(t: Difference, types: Mapping[str, DType], path: str) -> Step:
    left = _need(types, t.left, NUMERIC | _TIME, f"{path}.difference.left")
    if left is DType.TIMESTAMP:
        _need(types, t.right, _TIME, f"{path}.difference.right")

        def seconds(a: Scalar, b: Scalar) -> float:
            # Exact in integer microseconds, then one rounding to a double.
            assert isinstance(a, datetime) and isinstance(b, datetime)
            return (datetime_to_us(a) - datetime_to_us(b)) / MICROS

        def step(row: Row) -> None:
            a, b = row[t.left], row[t.right]
            missing = _missing(a, b)
            row[t.output] = missing or Cell(seconds(a.value, b.value), Status.COMPUTED, None)

        return step
    _need(types, t.right, NUMERIC, f"{path}.difference.right")
    return _binary(t.left, t.right, t.output, lambda a, b: a - b)


def _local(value: Scalar, zone: tzinfo) -> datetime:
    assert isinstance(value, datetime)
    return value.astimezone(zone)


def _one_hot(
    t: OneHot, types: Mapping[str, DType], path: str
) -> tuple[Step, list[tuple[str, DType]]]:
    _need(types, t.input, CATEGORICAL, f"{path}.one_hot.input")
    if not t.categories or len(set(t.categories)) != len(t.categories):
        raise InvalidInput.field(f"{path}.one_hot.categories", "need at least one, all distinct")
    names = [f"{t.output}={c}" for c in t.categories]
    if t.include_other:
        names.append(f"{t.output}={OTHER}")
    index = {c: i for i, c in enumerate(t.categories)}
    other = len(t.categories) if t.include_other else None
    source = t.input

    def step(row: Row) -> None:
        cell = row[source]
        missing = _missing(cell)
        if missing is not None:
            for name in names:
                row[name] = missing
            return
        hot = index.get(_category(cell.value), other)
        for i, name in enumerate(names):
            row[name] = Cell(1.0 if i == hot else 0.0, Status.COMPUTED, None)

    return step, [(name, DType.DOUBLE) for name in names]


def stable_hash(salt: bytes, text: str) -> int:
    """Same value on every machine and run (unlike ``hash()``): BLAKE2b-64 of salt + text."""
    return int.from_bytes(hashlib.blake2b(salt + text.encode(), digest_size=8).digest(), "big")
