"""Feature store definitions as Python objects: what ``mlbackend features apply defs.py``
reads, the same request a YAML definitions file becomes.

Only the client side is needed (no server runtime, numpy or pandas)::

    from datetime import timedelta
    from mlbackend_clients.feature_definitions import (
        Constraints, Entity, Feature, FeatureService, FeatureView, JoinKey, StandardScale,
    )

    user = Entity("user", [JoinKey("user_id", "STRING")])
    stats = FeatureView(
        "user_stats", entities=[user], ttl=timedelta(hours=24),
        features=[Feature("amount", "DOUBLE", constraints=Constraints(min=0, not_null=True))],
    )
    fraud = FeatureService(
        "fraud", feature_refs=[stats.ref("amount")],
        transforms=[StandardScale("amount_z", stats.ref("amount"), mean=10, std=2)],
    )

Every top-level definition of the module is applied, in the order they are defined
(lists and tuples of definitions count too); ``defs.py:name`` applies only ``name``.
Unset optional fields stay unset, so the server's defaults apply as with YAML.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from google.protobuf import duration_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.features.v1 import features_pb2 as pb
from mlbackend_clients.values import to_value

__all__ = [
    "Bucketize",
    "Clip",
    "Constraints",
    "DayOfWeek",
    "Difference",
    "Entity",
    "EpochSeconds",
    "Feature",
    "FeatureService",
    "FeatureView",
    "HashBucket",
    "HourOfDay",
    "JoinKey",
    "Log1p",
    "MinMaxScale",
    "OneHot",
    "Product",
    "Ratio",
    "RequestInput",
    "StandardScale",
    "apply_request",
    "parse_duration",
]

DType = Literal["INT64", "DOUBLE", "STRING", "BOOL", "TIMESTAMP"]
NanPolicy = Literal["REJECT", "AS_NULL", "ALLOW"]
Duration = timedelta | int | float | str
"""A ``timedelta``, seconds, or text such as ``90s``, ``30m``, ``24h``, ``7d``."""
AllowedValue = str | int | float | bool

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Duration) -> duration_pb2.Duration:
    """A duration as the proto takes it; refuses negative or malformed values."""
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        delta = timedelta(seconds=value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 30m, 24h, 7d)")
        delta = timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if delta < timedelta(0):
        raise ValueError(f"duration must not be negative: {value!r}")
    out = duration_pb2.Duration()
    out.FromTimedelta(delta)
    return out


def _dtype(value: str) -> common_pb2.DataType.ValueType:
    name = value.upper().removeprefix("DATA_TYPE_")
    try:
        return common_pb2.DataType.Value("DATA_TYPE_" + name)
    except ValueError:
        raise ValueError(
            f"unknown dtype {value!r} (INT64, DOUBLE, STRING, BOOL, TIMESTAMP)"
        ) from None


@dataclass(frozen=True)
class JoinKey:
    name: str
    dtype: DType


@dataclass(frozen=True)
class Entity:
    name: str
    join_keys: Sequence[JoinKey]
    description: str = ""
    owner: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_proto(self) -> pb.Entity:
        return pb.Entity(
            name=self.name,
            join_keys=[pb.JoinKey(name=k.name, dtype=_dtype(k.dtype)) for k in self.join_keys],
            description=self.description,
            owner=self.owner,
            tags=dict(self.tags),
        )


@dataclass(frozen=True)
class Constraints:
    not_null: bool = False
    min: float | None = None
    max: float | None = None
    allowed_values: Sequence[AllowedValue] = ()
    max_length: int = 0
    nan_policy: NanPolicy | None = None
    """Unset: the server's default (reject NaN and infinities)."""

    def to_proto(self) -> pb.FeatureConstraints:
        out = pb.FeatureConstraints(
            not_null=self.not_null,
            allowed_values=[to_value(v) for v in self.allowed_values],
            max_length=self.max_length,
        )
        if self.min is not None:
            out.min = self.min
        if self.max is not None:
            out.max = self.max
        if self.nan_policy is not None:
            out.nan_policy = pb.NanPolicy.Value("NAN_POLICY_" + self.nan_policy.upper())
        return out


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: DType
    description: str = ""
    constraints: Constraints | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_proto(self) -> pb.Feature:
        out = pb.Feature(
            name=self.name, dtype=_dtype(self.dtype), description=self.description,
            tags=dict(self.tags),
        )  # fmt: skip
        if self.constraints is not None:
            out.constraints.CopyFrom(self.constraints.to_proto())
        return out


@dataclass(frozen=True)
class FeatureView:
    name: str
    entities: Sequence[Entity | str]
    features: Sequence[Feature]
    ttl: Duration | None = None
    """How long a value stays valid after its event time; unset or 0 = forever."""
    online: bool | None = None
    """Unset: kept online."""
    offline_retention: Duration | None = None
    description: str = ""
    owner: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def ref(self, feature: str) -> str:
        """The ``view:feature`` reference feature services use; the feature must exist."""
        if all(f.name != feature for f in self.features):
            raise ValueError(f"feature view {self.name!r} has no feature {feature!r}")
        return f"{self.name}:{feature}"

    def to_proto(self) -> pb.FeatureView:
        out = pb.FeatureView(
            name=self.name,
            entities=[e if isinstance(e, str) else e.name for e in self.entities],
            features=[f.to_proto() for f in self.features],
            description=self.description,
            owner=self.owner,
            tags=dict(self.tags),
        )
        if self.ttl is not None:
            out.ttl.CopyFrom(parse_duration(self.ttl))
        if self.online is not None:
            out.online = self.online
        if self.offline_retention is not None:
            out.offline_retention.CopyFrom(parse_duration(self.offline_retention))
        return out


@dataclass(frozen=True)
class RequestInput:
    """A value the caller supplies with each read (e.g. the transaction amount)."""

    name: str
    dtype: DType
    nullable: bool = False
    constraints: Constraints | None = None
    """Checked on every supplied value (unset: NaN and infinities refused)."""

    def to_proto(self) -> pb.RequestInput:
        out = pb.RequestInput(name=self.name, dtype=_dtype(self.dtype), nullable=self.nullable)
        if self.constraints is not None:
            out.constraints.CopyFrom(self.constraints.to_proto())
        return out


# --- on-demand transforms: ``output`` first, then the input(s) and fitted parameters ----


@dataclass(frozen=True)
class StandardScale:
    output: str
    input: str
    mean: float
    std: float

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.StandardScale(input=self.input, mean=self.mean, std=self.std)
        return pb.Transform(output=self.output, standard_scale=kind)


@dataclass(frozen=True)
class MinMaxScale:
    output: str
    input: str
    min: float
    max: float

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.MinMaxScale(input=self.input, min=self.min, max=self.max)
        return pb.Transform(output=self.output, min_max_scale=kind)


@dataclass(frozen=True)
class Log1p:
    output: str
    input: str

    def to_proto(self) -> pb.Transform:
        return pb.Transform(output=self.output, log1p=pb.Transform.Log1p(input=self.input))


@dataclass(frozen=True)
class Clip:
    output: str
    input: str
    min: float | None = None
    max: float | None = None

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.Clip(input=self.input)
        if self.min is not None:
            kind.min = self.min
        if self.max is not None:
            kind.max = self.max
        return pb.Transform(output=self.output, clip=kind)


@dataclass(frozen=True)
class Bucketize:
    output: str
    input: str
    boundaries: Sequence[float]

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.Bucketize(input=self.input, boundaries=list(self.boundaries))
        return pb.Transform(output=self.output, bucketize=kind)


@dataclass(frozen=True)
class OneHot:
    output: str
    input: str
    categories: Sequence[str]
    include_other: bool = False

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.OneHot(
            input=self.input, categories=list(self.categories), include_other=self.include_other
        )
        return pb.Transform(output=self.output, one_hot=kind)


@dataclass(frozen=True)
class HashBucket:
    output: str
    input: str
    num_buckets: int
    salt: str = ""

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.HashBucket(
            input=self.input, num_buckets=self.num_buckets, salt=self.salt
        )
        return pb.Transform(output=self.output, hash_bucket=kind)


@dataclass(frozen=True)
class Product:
    output: str
    left: str
    right: str

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.Product(left=self.left, right=self.right)
        return pb.Transform(output=self.output, product=kind)


@dataclass(frozen=True)
class Ratio:
    output: str
    numerator: str
    denominator: str
    default_value: float = 0.0
    """The output when the denominator is zero or null."""

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.Ratio(
            numerator=self.numerator, denominator=self.denominator,
            default_value=self.default_value,
        )  # fmt: skip
        return pb.Transform(output=self.output, ratio=kind)


@dataclass(frozen=True)
class HourOfDay:
    output: str
    input: str
    time_zone: str = ""
    """IANA name, e.g. ``Europe/Berlin``; empty = UTC."""

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.HourOfDay(input=self.input, time_zone=self.time_zone)
        return pb.Transform(output=self.output, hour_of_day=kind)


@dataclass(frozen=True)
class DayOfWeek:
    output: str
    input: str
    time_zone: str = ""

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.DayOfWeek(input=self.input, time_zone=self.time_zone)
        return pb.Transform(output=self.output, day_of_week=kind)


@dataclass(frozen=True)
class Difference:
    """left - right: two numeric inputs, or two timestamps (seconds between them)."""

    output: str
    left: str
    right: str

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.Difference(left=self.left, right=self.right)
        return pb.Transform(output=self.output, difference=kind)


@dataclass(frozen=True)
class EpochSeconds:
    """Unix seconds of a timestamp input (a double, microsecond precision)."""

    output: str
    input: str

    def to_proto(self) -> pb.Transform:
        kind = pb.Transform.EpochSeconds(input=self.input)
        return pb.Transform(output=self.output, epoch_seconds=kind)


Transform = (
    StandardScale | MinMaxScale | Log1p | Clip | Bucketize | OneHot | HashBucket | Product | Ratio
    | HourOfDay | DayOfWeek | Difference | EpochSeconds
)  # fmt: skip


@dataclass(frozen=True)
class FeatureService:
    """A named set of feature refs plus transforms with fitted parameters; applying a
    changed one makes its next version."""

    name: str
    feature_refs: Sequence[str]
    request_inputs: Sequence[RequestInput] = ()
    transforms: Sequence[Transform] = ()
    outputs: Sequence[str] = ()
    """Columns a read returns, in order; empty = the refs, then every transform output."""
    description: str = ""
    owner: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_proto(self) -> pb.FeatureService:
        return pb.FeatureService(
            name=self.name,
            feature_refs=list(self.feature_refs),
            request_inputs=[r.to_proto() for r in self.request_inputs],
            transforms=[t.to_proto() for t in self.transforms],
            outputs=list(self.outputs),
            description=self.description,
            owner=self.owner,
            tags=dict(self.tags),
        )


Definition = Entity | FeatureView | FeatureService


def definitions_in(values: Iterable[object]) -> list[Definition]:
    """The definitions among ``values`` (and inside lists/tuples of them), in order,
    each object once."""
    out: list[Definition] = []
    seen: set[int] = set()

    def visit(value: object) -> None:
        if isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif isinstance(value, Entity | FeatureView | FeatureService) and id(value) not in seen:
            seen.add(id(value))
            out.append(value)

    for value in values:
        visit(value)
    return out


def apply_request(definitions: Iterable[Definition]) -> pb.ApplyDefinitionsRequest:
    """The ApplyDefinitions request for ``definitions``: entities, views, then services,
    each group in the given order."""
    request = pb.ApplyDefinitionsRequest()
    for item in definitions:
        if isinstance(item, Entity):
            request.entities.append(item.to_proto())
        elif isinstance(item, FeatureView):
            request.feature_views.append(item.to_proto())
        else:
            request.feature_services.append(item.to_proto())
    return request
