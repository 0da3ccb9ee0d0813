# Types of the C extension built from _treewalk.c (see there and setup.py).
from typing import Any

def pack_nodes(
    feature: Any, threshold: Any, left: Any, right: Any, missing_left: Any, /
) -> bytes: ...
def sum_leaves(
    x: Any,
    width: int,
    roots: Any,
    nodes: bytes,
    values: Any,
    init: Any,
    out: Any,
    /,
) -> None: ...
