"""Mangled protobuf requests: bytes for the C parsers' tests, scripts/sanitize_native.py
and the services' bad-input tests (``sweeps.py``); messages with fields changed for the
latter. No gRPC here: the sanitizer script imports this under ASan."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# Bytes that read as tags or length prefixes: a field number of 1-7 with wire type 0
# or 2, and the varint edge cases.
TAG_BYTES = (0x00, 0x08, 0x0A, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x7F, 0x80, 0xFF)


def mangled(rng: random.Random, seeds: Sequence[bytes], most_edits: int = 3) -> bytes:
    """One of ``seeds`` after 1 to ``most_edits`` edits: truncated, a bit flipped, a
    byte inserted, a byte made a tag, or another seed appended (a repeated field)."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, most_edits)):
        where = rng.randrange(len(data) + 1)
        edit = rng.randrange(5)
        if edit == 0:
            del data[where:]
        elif edit == 1 and where < len(data):
            data[where] ^= 1 << rng.randrange(8)
        elif edit == 2:
            data[where:where] = bytes([rng.randrange(256)])
        elif edit == 3 and where < len(data):
            data[where] = rng.choice(TAG_BYTES)
        else:
            data += rng.choice(seeds)
    return bytes(data)


def accepted_as_the_oracle_reads(
    parse: Callable[[bytes], Any],
    oracle: Callable[[bytes], Any],
    seeds: Sequence[bytes],
    *,
    same: Callable[[Any, Any], bool] = lambda got, want: bool(got == want),
    variants: int = 6_000,
) -> int:
    """How many of ``variants`` mangled seeds ``parse`` accepted (not None); each of
    them must read the same as ``oracle`` reads it (asserted, the bytes shown)."""
    rng = random.Random(20261127)
    accepted = 0
    for _ in range(variants):
        data = mangled(rng, seeds)
        got = parse(data)
        if got is not None:
            accepted += 1
            assert same(got, oracle(data)), data.hex()
    return accepted


# --- field-level: valid messages with one or a few fields changed ---------------------

_STRINGS = ("", "fraud", "nope", "1", "2", "-1", "0x10", "99999999999999999999",
            "production", "FP32", "FP64", "INT64", "INT32", "BYTES", "BOOL", "FP16", "UINT8",
            "fp32", "input", "probabilities", "label", "value", "f3", "user_id", "tx_amount",
            "ünï", "\x00")  # fmt: skip
_INTS = (0, 1, -1, 2, 3, 10, 65537, 2**31, 2**53 + 1, 2**62, 2**63 - 1, -(2**63))
_DOUBLES = (0.0, -0.0, 1.5, -3.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf)


def _value(field: FieldDescriptor, rng: random.Random) -> Any:
    kind = field.cpp_type
    if kind in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        value = rng.choice(_DOUBLES)
        return value if kind == FieldDescriptor.CPPTYPE_DOUBLE or abs(value) < 3e38 else 3e38
    if kind in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_INT32):
        bits = 63 if kind == FieldDescriptor.CPPTYPE_INT64 else 31
        return max(-(2**bits), min(2**bits - 1, rng.choice(_INTS)))
    if kind in (FieldDescriptor.CPPTYPE_UINT64, FieldDescriptor.CPPTYPE_UINT32):
        bits = 64 if kind == FieldDescriptor.CPPTYPE_UINT64 else 32
        return min(2**bits - 1, abs(rng.choice(_INTS)))
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values])
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 3, 4, 8, 12, 40, 80))))
    return rng.choice(_STRINGS)


def _places(message: Message) -> list[tuple[Message, FieldDescriptor]]:
    """Every (message, field) of ``message`` and of the messages it holds, set or not."""
    found = []
    for field in message.DESCRIPTOR.fields:
        found.append((message, field))
        if field.message_type is None:
            continue
        value = getattr(message, field.name)
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for child in value.values():
                    found += _places(child)
        elif field.is_repeated:
            for child in value:
                found += _places(child)
        elif message.HasField(field.name):
            found += _places(value)
    return found


def _change(message: Message, field: FieldDescriptor, rng: random.Random) -> None:
    value = getattr(message, field.name)
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key = _value(entry.fields_by_name["key"], rng)
        inner = entry.fields_by_name["value"]
        if inner.message_type is None:
            value[key] = _value(inner, rng)
        else:
            value[key].SetInParent()
        return
    if field.is_repeated:
        edit = rng.randrange(3)
        if edit == 0 and len(value):
            del value[rng.randrange(len(value))]
        elif edit == 1 and len(value) and field.message_type is not None:
            value.add().CopyFrom(value[rng.randrange(len(value))])
        elif field.message_type is not None:
            value.add()
        else:
            value.append(_value(field, rng))
        return
    if field.message_type is not None:
        if message.HasField(field.name) and rng.random() < 0.5:
            message.ClearField(field.name)
        else:
            value.SetInParent()
        return
    if rng.random() < 0.2:
        message.ClearField(field.name)
    else:
        setattr(message, field.name, _value(field, rng))


def perturbed(rng: random.Random, seeds: Sequence[Message], most_edits: int = 3) -> Message:
    """A copy of one of ``seeds`` with 1 to ``most_edits`` fields changed anywhere in
    it: a scalar set to an edge value (or cleared), a repeated field's element removed,
    copied or added, a message field cleared or made present, a map entry added."""
    seed = rng.choice(seeds)
    message = type(seed)()
    message.CopyFrom(seed)
    for _ in range(rng.randint(1, most_edits)):
        parent, field = rng.choice(_places(message))
        _change(parent, field, rng)
    return message
