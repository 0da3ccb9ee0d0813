"""Mangled protobuf requests for the C parsers' tests and scripts/sanitize_native.py."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

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
