"""Messages ↔ domain types of the feature store. The only module that knows both."""

from __future__ import annotations

import functools
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from mlbackend.common.v1 import common_pb2
from mlbackend.features.v1 import features_pb2 as pb
from mlbackend_features.core import model as m
from mlbackend_features.core.service import ViewStatistics
from mlbackend_runtime import status as wire_status
from mlbackend_runtime.errors import DomainError, InvalidInput
from mlbackend_runtime.received import invalid_timestamps

_DTYPES = {
    common_pb2.DATA_TYPE_INT64: m.DType.INT64,
    common_pb2.DATA_TYPE_DOUBLE: m.DType.DOUBLE,
    common_pb2.DATA_TYPE_STRING: m.DType.STRING,
    common_pb2.DATA_TYPE_BOOL: m.DType.BOOL,
    common_pb2.DATA_TYPE_TIMESTAMP: m.DType.TIMESTAMP,
}
_DTYPES_PB = {v: k for k, v in _DTYPES.items()}
_STATUS_PB = {
    m.Status.PRESENT: common_pb2.FEATURE_STATUS_PRESENT,
    m.Status.NOT_FOUND: common_pb2.FEATURE_STATUS_NOT_FOUND,
    m.Status.EXPIRED: common_pb2.FEATURE_STATUS_EXPIRED,
    m.Status.NULL_VALUE: common_pb2.FEATURE_STATUS_NULL_VALUE,
    m.Status.REQUEST_INPUT: common_pb2.FEATURE_STATUS_REQUEST_INPUT,
    m.Status.COMPUTED: common_pb2.FEATURE_STATUS_COMPUTED,
}
_NAN = {
    pb.NAN_POLICY_UNSPECIFIED: m.NanPolicy.REJECT,
    pb.NAN_POLICY_REJECT: m.NanPolicy.REJECT,
    pb.NAN_POLICY_AS_NULL: m.NanPolicy.AS_NULL,
    pb.NAN_POLICY_ALLOW: m.NanPolicy.ALLOW,
}
_NAN_PB = {
    m.NanPolicy.REJECT: pb.NAN_POLICY_REJECT,
    m.NanPolicy.AS_NULL: pb.NAN_POLICY_AS_NULL,
    m.NanPolicy.ALLOW: pb.NAN_POLICY_ALLOW,
}
_CHANGES = {
    m.ChangeType.CREATED: pb.CHANGE_TYPE_CREATED,
    m.ChangeType.UPDATED: pb.CHANGE_TYPE_UPDATED,
    m.ChangeType.FORCED: pb.CHANGE_TYPE_FORCED,
    m.ChangeType.UNCHANGED: pb.CHANGE_TYPE_UNCHANGED,
}
_EPOCH = datetime.fromtimestamp(0, UTC)


# --- scalars ----------------------------------------------------------------------------

Convert = TypeVar("Convert", bound=Callable[..., Any])


def _naming_bad_timestamps(prefix: str) -> Callable[[Convert], Convert]:
    """A request's conversion that fails on a timestamp out of datetime's range (any
    seconds and nanos travel on the wire) raises INVALID_ARGUMENT naming each such
    field instead, under ``prefix`` (the converted message's field in its request)."""

    def decorate(convert: Convert) -> Convert:
        @functools.wraps(convert)
        def checked(message: Message, *args: Any) -> Any:
            try:
                return convert(message, *args)
            except (OverflowError, ValueError):
                found = invalid_timestamps(message, prefix)
                if not found:
                    raise
                raise InvalidInput(f"{found[0].field}: {found[0].description}", found) from None

        return cast(Convert, checked)

    return decorate


def dtype(value: int) -> m.DType:
    # An unset dtype stays UNSPECIFIED, which the core reports as a field violation.
    return _DTYPES.get(value, m.DType.UNSPECIFIED)  # type: ignore[call-overload,no-any-return]


def micros(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1_000


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    seconds, rest = divmod(us, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1_000)


def optional_micros(message: Any, field: str) -> int | None:
    return micros(getattr(message, field)) if message.HasField(field) else None


def scalar(value: common_pb2.Value) -> m.Scalar:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "timestamp_value":
        return _EPOCH + timedelta(microseconds=micros(value.timestamp_value))
    return getattr(value, kind)  # type: ignore[no-any-return]


def value_pb(value: m.Scalar) -> common_pb2.Value:
    if value is None:
        return common_pb2.Value()
    if isinstance(value, bool):
        return common_pb2.Value(bool_value=value)
    if isinstance(value, int):
        return common_pb2.Value(int64_value=value)
    if isinstance(value, float):
        return common_pb2.Value(double_value=value)
    if isinstance(value, str):
        return common_pb2.Value(string_value=value)
    return common_pb2.Value(timestamp_value=timestamp(m.datetime_to_us(value)))


def entity_key(key: common_pb2.EntityKey) -> m.EntityKey:
    # Keys and lookups: faster than the map's items() (upb builds an item per entry).
    join_keys = key.join_keys
    out: m.EntityKey = {}
    for name in join_keys:
        value = join_keys[name]
        out[name] = (
            value.int64_value if value.WhichOneof("kind") == "int64_value" else scalar(value)
        )
    return out


def feature_map(values: common_pb2.FeatureMap) -> dict[str, m.Scalar]:
    return {name: scalar(v) for name, v in values.values.items()}


def _duration(d: duration_pb2.Duration) -> timedelta:
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1_000)


def _duration_pb(t: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(t)
    return d


def _time(message: Any, field: str) -> datetime | None:
    us = optional_micros(message, field)
    return None if us is None else m.us_to_datetime(us)


def _set_time(target: Any, field: str, value: datetime | None) -> None:
    if value is not None:
        getattr(target, field).CopyFrom(timestamp(m.datetime_to_us(value)))


# --- definitions ------------------------------------------------------------------------


@_naming_bad_timestamps("")
def definition_set(request: pb.ApplyDefinitionsRequest) -> m.DefinitionSet:
    return m.DefinitionSet(
        entities=tuple(entity(e) for e in request.entities),
        feature_views=tuple(feature_view(v) for v in request.feature_views),
        feature_services=tuple(feature_service(s) for s in request.feature_services),
    )


def entity(e: pb.Entity) -> m.Entity:
    return m.Entity(
        name=e.name,
        join_keys=tuple(m.JoinKey(name=k.name, dtype=dtype(k.dtype)) for k in e.join_keys),
        description=e.description,
        owner=e.owner,
        tags=dict(e.tags),
    )


def entity_pb(e: m.Entity) -> pb.Entity:
    out = pb.Entity(
        name=e.name,
        join_keys=[pb.JoinKey(name=k.name, dtype=_DTYPES_PB[k.dtype]) for k in e.join_keys],
        description=e.description,
        owner=e.owner,
        tags=e.tags,
        revision=e.revision,
    )
    _set_time(out, "create_time", e.create_time)
    _set_time(out, "update_time", e.update_time)
    return out


def feature_view(v: pb.FeatureView) -> m.FeatureView:
    return m.FeatureView(
        name=v.name,
        entities=tuple(v.entities),
        features=tuple(_feature(f) for f in v.features),
        ttl=_duration(v.ttl),
        online=v.online if v.HasField("online") else True,
        offline_retention=_duration(v.offline_retention),
        description=v.description,
        owner=v.owner,
        tags=dict(v.tags),
    )


def _feature(f: pb.Feature) -> m.Feature:
    return m.Feature(
        name=f.name,
        dtype=dtype(f.dtype),
        description=f.description,
        tags=dict(f.tags),
        constraints=_constraints(f.constraints),
    )


def _constraints(c: pb.FeatureConstraints) -> m.Constraints:
    return m.Constraints(
        not_null=c.not_null,
        min=c.min if c.HasField("min") else None,
        max=c.max if c.HasField("max") else None,
        allowed_values=tuple(scalar(v) for v in c.allowed_values),
        max_length=c.max_length,
        nan_policy=_NAN.get(c.nan_policy, m.NanPolicy.REJECT),
    )


def feature_view_pb(v: m.FeatureView) -> pb.FeatureView:
    out = pb.FeatureView(
        name=v.name,
        entities=v.entities,
        features=[_feature_pb(f) for f in v.features],
        ttl=_duration_pb(v.ttl),
        online=v.online,
        offline_retention=_duration_pb(v.offline_retention),
        description=v.description,
        owner=v.owner,
        tags=v.tags,
        revision=v.revision,
    )
    _set_time(out, "create_time", v.create_time)
    _set_time(out, "update_time", v.update_time)
    return out


def _feature_pb(f: m.Feature) -> pb.Feature:
    return pb.Feature(
        name=f.name,
        dtype=_DTYPES_PB[f.dtype],
        description=f.description,
        constraints=_constraints_pb(f.constraints),
        tags=f.tags,
    )


def _constraints_pb(c: m.Constraints) -> pb.FeatureConstraints:
    out = pb.FeatureConstraints(
        not_null=c.not_null,
        allowed_values=[value_pb(v) for v in c.allowed_values],
        max_length=c.max_length,
        nan_policy=_NAN_PB[c.nan_policy],
    )
    if c.min is not None:
        out.min = c.min
    if c.max is not None:
        out.max = c.max
    return out


def _transform(t: pb.Transform) -> m.Transform:
    kind = t.WhichOneof("kind")
    out = t.output
    if kind == "standard_scale":
        s = t.standard_scale
        return m.StandardScale(output=out, input=s.input, mean=s.mean, std=s.std)
    if kind == "min_max_scale":
        mm = t.min_max_scale
        return m.MinMaxScale(output=out, input=mm.input, min=mm.min, max=mm.max)
    if kind == "log1p":
        return m.Log1p(output=out, input=t.log1p.input)
    if kind == "clip":
        c = t.clip
        return m.Clip(
            output=out,
            input=c.input,
            min=c.min if c.HasField("min") else None,
            max=c.max if c.HasField("max") else None,
        )
    if kind == "bucketize":
        b = t.bucketize
        return m.Bucketize(output=out, input=b.input, boundaries=tuple(b.boundaries))
    if kind == "one_hot":
        o = t.one_hot
        return m.OneHot(
            output=out,
            input=o.input,
            categories=tuple(o.categories),
            include_other=o.include_other,
        )
    if kind == "hash_bucket":
        h = t.hash_bucket
        return m.HashBucket(output=out, input=h.input, num_buckets=h.num_buckets, salt=h.salt)
    if kind == "product":
        return m.Product(output=out, left=t.product.left, right=t.product.right)
    if kind == "ratio":
        r = t.ratio
        return m.Ratio(
            output=out,
            numerator=r.numerator,
            denominator=r.denominator,
            default_value=r.default_value,
        )
    if kind == "hour_of_day":
        return m.HourOfDay(output=out, input=t.hour_of_day.input, time_zone=t.hour_of_day.time_zone)
    if kind == "day_of_week":
        return m.DayOfWeek(output=out, input=t.day_of_week.input, time_zone=t.day_of_week.time_zone)
    if kind == "difference":
        return m.Difference(output=out, left=t.difference.left, right=t.difference.right)
    if kind == "epoch_seconds":
        return m.EpochSeconds(output=out, input=t.epoch_seconds.input)
    # No kind: an input nothing can produce, so the core names the transform's field.
    return m.Log1p(output=out, input="")


def _transform_pb(t: m.Transform) -> pb.Transform:
    out = pb.Transform(output=t.output)
    if isinstance(t, m.StandardScale):
        out.standard_scale.CopyFrom(
            pb.Transform.StandardScale(input=t.input, mean=t.mean, std=t.std)
        )
    elif isinstance(t, m.MinMaxScale):
        out.min_max_scale.CopyFrom(pb.Transform.MinMaxScale(input=t.input, min=t.min, max=t.max))
    elif isinstance(t, m.Log1p):
        out.log1p.CopyFrom(pb.Transform.Log1p(input=t.input))
    elif isinstance(t, m.Clip):
        clip = pb.Transform.Clip(input=t.input)
        if t.min is not None:
            clip.min = t.min
        if t.max is not None:
            clip.max = t.max
        out.clip.CopyFrom(clip)
    elif isinstance(t, m.Bucketize):
        out.bucketize.CopyFrom(pb.Transform.Bucketize(input=t.input, boundaries=t.boundaries))
    elif isinstance(t, m.OneHot):
        out.one_hot.CopyFrom(
            pb.Transform.OneHot(
                input=t.input, categories=t.categories, include_other=t.include_other
            )
        )
    elif isinstance(t, m.HashBucket):
        out.hash_bucket.CopyFrom(
            pb.Transform.HashBucket(input=t.input, num_buckets=t.num_buckets, salt=t.salt)
        )
    elif isinstance(t, m.Product):
        out.product.CopyFrom(pb.Transform.Product(left=t.left, right=t.right))
    elif isinstance(t, m.Ratio):
        out.ratio.CopyFrom(
            pb.Transform.Ratio(
                numerator=t.numerator, denominator=t.denominator, default_value=t.default_value
            )
        )
    elif isinstance(t, m.HourOfDay):
        out.hour_of_day.CopyFrom(pb.Transform.HourOfDay(input=t.input, time_zone=t.time_zone))
    elif isinstance(t, m.DayOfWeek):
        out.day_of_week.CopyFrom(pb.Transform.DayOfWeek(input=t.input, time_zone=t.time_zone))
    elif isinstance(t, m.Difference):
        out.difference.CopyFrom(pb.Transform.Difference(left=t.left, right=t.right))
    else:
        out.epoch_seconds.CopyFrom(pb.Transform.EpochSeconds(input=t.input))
    return out


def feature_service(s: pb.FeatureService) -> m.FeatureService:
    return m.FeatureService(
        name=s.name,
        feature_refs=tuple(s.feature_refs),
        request_inputs=tuple(
            m.RequestInput(
                name=r.name,
                dtype=dtype(r.dtype),
                nullable=r.nullable,
                constraints=_constraints(r.constraints),
            )
            for r in s.request_inputs
        ),
        transforms=tuple(_transform(t) for t in s.transforms),
        outputs=tuple(s.outputs),
        description=s.description,
        owner=s.owner,
        tags=dict(s.tags),
    )


def schema_pb(columns: Iterable[m.OutputColumn]) -> list[common_pb2.FeatureSpec]:
    return [
        common_pb2.FeatureSpec(
            name=c.name, dtype=_DTYPES_PB[c.dtype], nullable=c.nullable, description=c.description
        )
        for c in columns
    ]


def feature_service_pb(s: m.FeatureService) -> pb.FeatureService:
    out = pb.FeatureService(
        name=s.name,
        version=s.version,
        feature_refs=s.feature_refs,
        request_inputs=[
            pb.RequestInput(
                name=r.name,
                dtype=_DTYPES_PB[r.dtype],
                nullable=r.nullable,
                constraints=_constraints_pb(r.constraints),
            )
            for r in s.request_inputs
        ],
        transforms=[_transform_pb(t) for t in s.transforms],
        outputs=s.outputs,
        output_schema=schema_pb(s.output_schema),
        description=s.description,
        owner=s.owner,
        tags=s.tags,
        created_by=s.created_by,
    )
    _set_time(out, "create_time", s.create_time)
    return out


def changes_pb(changes: Sequence[m.DefinitionChange]) -> pb.ApplyDefinitionsResponse:
    return pb.ApplyDefinitionsResponse(
        changes=[
            pb.DefinitionChange(
                kind=c.kind,
                name=c.name,
                change_type=_CHANGES[c.change_type],
                revision=c.revision,
                detail=c.detail,
            )
            for c in changes
        ]
    )


# --- writes -----------------------------------------------------------------------------


@_naming_bad_timestamps("batch")
def write_batch(batch: pb.FeatureBatch) -> m.WriteBatch:
    return m.WriteBatch(
        batch.batch_id,
        batch.feature_view,
        list(batch.features),
        [
            m.WriteRow(
                entity_key(row.entity_key),
                optional_micros(row, "event_time"),
                [scalar(v) for v in row.values],
            )
            for row in batch.rows
        ],
    )


async def push_batches(
    requests: AsyncIterator[pb.PushFeaturesRequest],
) -> AsyncIterator[m.WriteBatch]:
    async for request in requests:
        yield write_batch(request.batch)


def write_ack_pb(ack: m.WriteAck) -> pb.WriteFeaturesResponse:
    return pb.WriteFeaturesResponse(
        batch_id=ack.batch_id, row_count=ack.row_count, sequence=ack.sequence
    )


def push_ack_pb(ack: m.PushAck) -> pb.PushFeaturesResponse:
    if ack.ack is not None:
        return pb.PushFeaturesResponse(
            batch_id=ack.batch_id,
            accepted=True,
            row_count=ack.ack.row_count,
            sequence=ack.ack.sequence,
        )
    error = ack.error
    code = wire_status.code_for(error).value[0] if isinstance(error, DomainError) else 13
    return pb.PushFeaturesResponse(
        batch_id=ack.batch_id,
        accepted=False,
        error_code=code,
        error_message=str(error),
        violations=[
            pb.WriteViolation(row_index=v.row_index, feature=v.feature, description=v.description)
            for v in ack.violations
        ],
    )


# --- reads ------------------------------------------------------------------------------


@_naming_bad_timestamps("")
def online_query(request: pb.GetOnlineFeaturesRequest) -> m.OnlineQuery:
    return m.OnlineQuery(
        list(request.feature_refs),
        request.feature_service,
        [entity_key(k) for k in request.entity_keys],
        [feature_map(f) for f in request.request_inputs],
    )


# Response rows are written as protobuf wire bytes and parsed into the response in one C
# call: building one FeatureValue, Value and Timestamp message per cell cost more than
# the rest of a read together. Field numbers below are those of features.proto and
# common.proto (FeatureValueRow.values = 1; FeatureValue: value = 1, status = 2,
# event_time = 3; Value: int64 = 1, double = 2, string = 3, bool = 4, timestamp = 5;
# Timestamp: seconds = 1, nanos = 2), checked against the generated messages in tests.
_ONLINE_ROWS = b"\x12"  # GetOnlineFeaturesResponse.rows = 2, length-delimited
_HISTORICAL_ROWS = b"\x1a"  # GetHistoricalFeaturesResponse.rows = 3, length-delimited
_FEATURE_SERVICE = b"\x1a"  # GetOnlineFeaturesResponse.feature_service = 3, a string
_BYTE = [bytes((i,)) for i in range(256)]
_STATUS_TAG = {s: b"\x10" + _BYTE[code] for s, code in _STATUS_PB.items()}
_PACK_DOUBLE = struct.Struct("<d").pack
_TRUE, _FALSE = b"\x0a\x02\x20\x01", b"\x0a\x02\x20\x00"


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 on the wire: two's complement, ten bytes
    if n < 0x80:
        return _BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if 0x10000000 <= n < 0x800000000:  # five bytes: seconds since 1978 until 3058
        return bytes(
            (n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21 & 0x7F | 0x80,
             n >> 28)
        )  # fmt: skip
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _timestamp_bytes(us: int) -> bytes:
    seconds, rest = divmod(us, 1_000_000)
    out = b"\x08" + _varint(seconds) if seconds else b""
    return out + b"\x10" + _varint(rest * 1_000) if rest else out


def _value_bytes(value: m.Scalar) -> bytes:
    """FeatureValue.value (tag included) of a non-null value other than a double."""
    kind = type(value)
    if kind is int:
        body = b"\x08" + _varint(value)  # type: ignore[arg-type]
    elif kind is str:
        text = value.encode()  # type: ignore[union-attr]
        body = b"\x1a" + _varint(len(text)) + text
    elif kind is bool:
        return _TRUE if value else _FALSE
    elif kind is float:
        body = b"\x11" + _PACK_DOUBLE(value)
    else:
        stamp = _timestamp_bytes(m.datetime_to_us(value))  # type: ignore[arg-type]
        body = b"\x2a" + _varint(len(stamp)) + stamp
    return b"\x0a" + _varint(len(body)) + body


def _rows_bytes(tag: bytes, rows: Sequence[Sequence[m.Cell]]) -> bytes:
    """``rows`` as the wire bytes of a repeated FeatureValueRow field with ``tag``."""
    out: list[bytes] = []
    append = out.append
    done: dict[int, bytes] = {}  # other rows shared by several entities: encoded once
    present_row = m.PresentRow
    for cells in rows:
        if type(cells) is present_row:
            # Kept with the row, length first: a hot entity's row is read again and again.
            body = cells.wire
            if body is None:
                row = _present_bytes(cells.values, cells.event_us)
                body = cells.wire = _varint(len(row)) + row
            append(tag + body)
            continue
        encoded = done.get(id(cells))
        if encoded is None:
            row = _cells_bytes(cells)
            encoded = done[id(cells)] = tag + _varint(len(row)) + row
        append(encoded)
    return b"".join(out)


_PRESENT_TAG = _STATUS_TAG[m.Status.PRESENT]
_DOUBLE = struct.Struct("<5sd").pack  # a double's FeatureValue head and Value, one call
_INT2 = struct.Struct("<5sBB").pack  # the same for an int64 of two varint bytes


@functools.cache
def _heads(tail_size: int) -> tuple[bytes, bytes, bytes]:
    """What precedes a double, an int64 < 2**7 and one < 2**14 in a FeatureValue whose
    status and event time take ``tail_size`` bytes."""
    return (
        b"\x0a" + _BYTE[11 + tail_size] + b"\x0a\x09\x11",
        b"\x0a" + _BYTE[4 + tail_size] + b"\x0a\x02\x08",
        b"\x0a" + _BYTE[5 + tail_size] + b"\x0a\x03\x08",
    )


def _present_bytes(values: Sequence[m.Scalar], event_us: int) -> bytes:
    """The FeatureValues of a stored row's cells (:class:`m.PresentRow`): every cell ends
    in the same status and event time, so each value is encoded with its head, and the
    shared tail goes between them in one join."""
    stamp = _timestamp_bytes(event_us)
    tail = _PRESENT_TAG + b"\x1a" + _BYTE[len(stamp)] + stamp
    size = len(tail)
    double, int1, int2 = _heads(size)
    heads: list[bytes] = []
    append = heads.append
    for value in values:
        kind = type(value)
        if kind is float:
            append(_DOUBLE(double, value))
        elif kind is int and 0 <= value < 0x4000:  # type: ignore[operator]
            if value < 0x80:  # type: ignore[operator]
                append(int1 + _BYTE[value])  # type: ignore[index]
            else:
                append(_INT2(int2, value & 0x7F | 0x80, value >> 7))  # type: ignore[operator]
        elif value is None:
            # A NULL_VALUE cell has another tail: the cell by cell way for this row.
            return _cells_bytes(m.PresentRow(list(values), event_us))
        else:
            body = _value_bytes(value)
            append(b"\x0a" + _varint(len(body) + size) + body)
    return tail.join(heads) + tail if heads else b""


def _cells_bytes(cells: Sequence[m.Cell]) -> bytes:
    """The FeatureValues of a row of cells, one after the other."""
    if len(cells) > 1 and cells.count(cells[0]) == len(cells):
        # One cell repeated (a row not found, or expired): encoded once.
        return _cells_bytes(cells[:1]) * len(cells)
    parts: list[bytes] = []
    last_status: m.Status | None = None
    last_event: int | None = None
    # Status and event time are often shared by the cells of a row: their bytes, and
    # those of a null cell and of a double's prefix, change only when they do.
    tail = null = double = int1 = int2 = b""
    pack = _PACK_DOUBLE
    for value, status, event_us in cells:
        if status is not last_status or event_us != last_event:
            tail = _STATUS_TAG[status]
            if event_us is not None:
                stamp = _timestamp_bytes(event_us)
                tail += b"\x1a" + _BYTE[len(stamp)] + stamp
            null = b"\x0a" + _BYTE[len(tail)] + tail
            double = b"\x0a" + _BYTE[11 + len(tail)] + b"\x0a\x09\x11"
            int1 = b"\x0a" + _BYTE[4 + len(tail)] + b"\x0a\x02\x08"  # 0 <= int < 2**7
            int2 = b"\x0a" + _BYTE[5 + len(tail)] + b"\x0a\x03\x08"  # < 2**14
            last_status, last_event = status, event_us
        kind = type(value)
        if kind is float:
            parts.append(double + pack(value) + tail)
        elif kind is int and 0 <= value < 0x4000:  # type: ignore[operator]
            if value < 0x80:  # type: ignore[operator]
                parts.append(int1 + _BYTE[value] + tail)  # type: ignore[index]
            else:
                low, high = value & 0x7F | 0x80, value >> 7  # type: ignore[operator]
                parts.append(int2 + bytes((low, high)) + tail)
        elif value is None:
            parts.append(null)
        else:
            body = _value_bytes(value) + tail
            parts.append(b"\x0a" + _varint(len(body)) + body)
    return b"".join(parts)


# The schema of a read plan's results, as the bytes of the responses' field 1 (schema in
# both responses): a plan hands out one tuple for all its results, so the entry of the
# same tuple object is reused; holding the tuple keeps its id from being reused.
_SCHEMAS: dict[int, tuple[tuple[m.OutputColumn, ...], bytes]] = {}
_MAX_SCHEMAS = 256


def _schema_bytes(schema: tuple[m.OutputColumn, ...]) -> bytes:
    hit = _SCHEMAS.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    encoded = pb.GetOnlineFeaturesResponse(schema=schema_pb(schema)).SerializeToString()
    if len(_SCHEMAS) >= _MAX_SCHEMAS:
        _SCHEMAS.clear()
    _SCHEMAS[id(schema)] = (schema, encoded)
    return encoded


def online_result_wire(result: m.ReadResult) -> bytes:
    """The GetOnlineFeaturesResponse of ``result`` as wire bytes, never parsed in Python
    (a thread-front handler answers them as they are)."""
    service = result.feature_service.encode()
    return (
        _schema_bytes(result.schema)
        + _rows_bytes(_ONLINE_ROWS, result.rows)
        + (_FEATURE_SERVICE + _varint(len(service)) + service if service else b"")
    )


def online_result_pb(result: m.ReadResult) -> pb.GetOnlineFeaturesResponse:
    return pb.GetOnlineFeaturesResponse.FromString(online_result_wire(result))


@_naming_bad_timestamps("")
def historical_query(request: pb.GetHistoricalFeaturesRequest) -> m.HistoricalQuery:
    # Up to a million entity rows: each field is read once, in one loop.
    rows: list[m.HistoricalRow] = []
    append = rows.append
    row_type, new = m.HistoricalRow, tuple.__new__  # without the named tuple's own __new__
    for r in request.entity_rows:
        event_us = micros(r.event_time) if r.HasField("event_time") else None
        inputs = feature_map(r.request_inputs) if r.HasField("request_inputs") else {}
        append(new(row_type, (entity_key(r.entity_key), event_us, inputs)))
    return m.HistoricalQuery(
        list(request.feature_refs), request.feature_service, rows, request.chunk_size
    )


def historical_chunk_pb(chunk: m.HistoricalChunk) -> pb.GetHistoricalFeaturesResponse:
    response = pb.GetHistoricalFeaturesResponse.FromString(
        _schema_bytes(chunk.schema) + _rows_bytes(_HISTORICAL_ROWS, chunk.rows)
    )
    response.start_row_index = chunk.start_row_index
    response.feature_service = chunk.feature_service
    return response


def materialize_args(request: pb.MaterializeRequest) -> tuple[list[str], int | None, int | None]:
    return (
        list(request.feature_views),
        optional_micros(request, "start_time"),
        optional_micros(request, "end_time"),
    )


def progress_pb(p: m.MaterializeProgress) -> pb.MaterializeResponse:
    return pb.MaterializeResponse(
        feature_view=p.feature_view,
        rows_done=p.rows_done,
        rows_total=p.rows_total,
        done=p.done,
        materialized_until=timestamp(p.materialized_until_us),
    )


def statistics_args(
    r: pb.GetFeatureStatisticsRequest,
) -> tuple[str, list[str], int | None, int | None, int, list[float]]:
    return (
        r.feature_view,
        list(r.features),
        optional_micros(r, "start_time"),
        optional_micros(r, "end_time"),
        r.histogram_bins,
        list(r.quantiles),
    )


def statistics_pb(stats: ViewStatistics) -> pb.GetFeatureStatisticsResponse:
    features = []
    for f in stats.features:
        s = f.summary
        item = common_pb2.FeatureStatistics(
            name=f.name,
            dtype=_DTYPES_PB[f.dtype],
            count=s.total,
            null_count=s.null_count,
            nan_count=s.nan_count,
            distinct_count=s.distinct_count,
            quantiles=[common_pb2.Quantile(quantile=q, value=v) for q, v in s.quantiles],
            top_categories=[
                common_pb2.CategoryCount(value=value_pb(v), count=n)  # type: ignore[arg-type]
                for v, n in s.top_categories
            ],
        )
        for name in ("mean", "std", "min", "max"):
            value = getattr(s, name)
            if value is not None:
                setattr(item, name, value)
        if s.histogram_counts:
            item.histogram.CopyFrom(
                common_pb2.Histogram(bin_edges=s.histogram_edges, counts=s.histogram_counts)
            )
        features.append(item)
    dataset = common_pb2.DatasetStatistics(
        features=features,
        row_count=stats.row_count,
        start_time=timestamp(stats.start_us),
        end_time=timestamp(stats.end_us),
        compute_time=timestamp(stats.compute_us),
    )
    return pb.GetFeatureStatisticsResponse(statistics=dataset)
