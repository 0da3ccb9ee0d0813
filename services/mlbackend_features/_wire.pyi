# Types of the C extension built from _wire.c (see there and setup.py).

def parse_online_request(
    data: bytes | bytearray | memoryview, /
) -> tuple[list[str], str, str, list[int] | list[str]] | None: ...
