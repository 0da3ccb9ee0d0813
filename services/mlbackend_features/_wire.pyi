# Types of the C extension built from _wire.c (see there and setup.py).
from collections.abc import Buffer

def parse_online_request(
    data: Buffer, /
) -> tuple[list[str], str, str, list[int] | list[str]] | None: ...
