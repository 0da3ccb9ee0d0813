"""Values of received messages that may not convert: the caller's fault, named.

A ``google.protobuf.Timestamp`` holds any seconds and nanos on the wire, but only
0001-01-01 to 9999-12-31 with nanos in [0, 999,999,999] are valid, and protobuf's
``ToDatetime`` raises ``ValueError`` for the rest; a ``Duration`` past ±10,000 years
overflows ``timedelta``. Converted or found with these, such a value is INVALID_ARGUMENT
naming its field, not an INTERNAL error.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from mlbackend.common.v1 import common_pb2
from mlbackend_clients.values import Scalar, to_scalar
from mlbackend_runtime.errors import FieldViolation, InvalidInput


def scalar_at(value: common_pb2.Value, field: str) -> Scalar:
    """``to_scalar(value)``; a timestamp that is not valid is an error naming ``field``."""
    try:
        return to_scalar(value)
    except ValueError as exc:
        raise InvalidInput.field(field, f"not a valid timestamp: {exc}") from None


def time_at(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """``stamp`` as an aware UTC datetime; one that is not valid is an error naming
    ``field``."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidInput.field(field, f"not a valid timestamp: {exc}") from None


# Timestamp's valid range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Duration's: about ±10,000 years.
_MAX_DURATION_SECONDS = 315_576_000_000


def invalid_timestamps(message: Message, path: str = "") -> list[FieldViolation]:
    """Every ``google.protobuf.Timestamp`` in ``message`` (nested, repeated, in maps)
    outside that range or with nanos outside [0, 999,999,999], and every ``Duration``
    outside its own, by field path: for a conversion that failed, to name what the
    caller got wrong."""
    found: list[FieldViolation] = []
    kind = message.DESCRIPTOR.full_name
    if kind == "google.protobuf.Timestamp":
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos <= 999_999_999):
            found.append(FieldViolation(path, "not a valid timestamp (years 1-9999)"))
        return found
    if kind == "google.protobuf.Duration":
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if not (abs(seconds) <= _MAX_DURATION_SECONDS and abs(nanos) <= 999_999_999):
            found.append(FieldViolation(path, "not a valid duration (at most 10,000 years)"))
        return found
    for field, value in message.ListFields():
        where = f"{path}.{field.name}" if path else field.name
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key in value:
                    found += invalid_timestamps(value[key], f"{where}.{key}")
        elif field.is_repeated:
            for i, item in enumerate(value):
                found += invalid_timestamps(item, f"{where}[{i}]")
        else:
            found += invalid_timestamps(value, where)
    return found
