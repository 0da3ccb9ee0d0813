"""The C extensions under AddressSanitizer/UndefinedBehaviorSanitizer (scripts/
sanitize_native.py): their tests and a short mutation fuzz of every entry point. CI
requires it; elsewhere it runs where a compiler with the sanitizer runtimes exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _sanitizers_available() -> bool:
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        return False
    found = subprocess.run(
        [compiler, "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return os.path.isabs(found)


@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not CI and not _sanitizers_available(), reason="no compiler with sanitizer runtimes"
)
def test_the_c_extensions_are_clean_under_the_sanitizers() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sanitize_native.py"), "--seconds", "2"],
        capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "sanitizers: clean" in result.stdout
    for entry in ("ModelInfer parser", "online read parser", "tree walk"):
        assert f"{entry}: " in result.stdout, result.stdout
