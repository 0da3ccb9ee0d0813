# Types of the C extension built from _oipwire.c (see there and setup.py).

def parse_infer_request(
    data: bytes | bytearray | memoryview, /
) -> tuple[str, str, str, str, str, tuple[int, ...], bytes, bool, tuple[str, ...]] | None: ...
