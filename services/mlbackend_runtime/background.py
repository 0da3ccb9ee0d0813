"""Work a service does for itself, off the event loop and behind the work it serves.

:func:`background_executor` is one thread at a lower CPU priority (a higher nice
value; Linux sets it per thread). On a host it shares with the online path, such a
thread takes the CPU that is left over first: monitoring's ingest costs ~25 µs of CPU
a prediction record, milliseconds per batch in one go, and at the same priority it
competes with the predictions being served while it runs (`bench/gateway/README.md`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)


def background_executor(name: str, nice: int) -> ThreadPoolExecutor:
    """One thread named ``name``, ``nice`` steps below the process's priority."""
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=name, initializer=_lower_priority, initargs=(nice,)
    )


def _lower_priority(nice: int) -> None:
    if nice <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()  # on Linux a thread is its own scheduling entity
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + nice))
    except OSError as exc:  # a sandbox may refuse; the work still runs
        logger.warning("cannot lower the priority of a background thread: %s", exc)
