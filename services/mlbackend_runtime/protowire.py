"""The little of protobuf's wire format written or read by hand in Python (response
bytes, stream envelopes): varints."""

from __future__ import annotations

_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def varint(value: int) -> bytes:
    """``value`` as a varint; a negative int64 takes ten bytes, as protobuf writes it."""
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` of ``data`` and the position after it (unsigned; a
    negative int64 reads as its two's complement). IndexError when ``data`` ends in it,
    ValueError past ten bytes."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
