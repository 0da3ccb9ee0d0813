"""Background threads run below the process's CPU priority (Linux sets it per thread)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from mlbackend_runtime.background import background_executor


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priority is Linux's")
def test_the_background_thread_is_niced_and_the_caller_is_not() -> None:
    before = _own_nice()
    expected = min(19, before + 7)
    with background_executor("test-background", 7) as pool:
        assert pool.submit(_own_nice).result(timeout=10) == expected
        assert (
            pool.submit(lambda: threading.current_thread().name)
            .result(timeout=10)
            .startswith("test-background")
        )
    assert _own_nice() == before
    with background_executor("test-background", 0) as pool:
        assert pool.submit(_own_nice).result(timeout=10) == before
