"""`make demo`'s main job stays true at every commit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_trains_serves_scores_and_stops_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlbackend_cli", "demo", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    model_pr_auc = float(re.search(r"^model\s+([\d.]+)", out, re.M).group(1))  # type: ignore[union-attr]
    rule_pr_auc = float(re.search(r"^rule scorer\s+([\d.]+)", out, re.M).group(1))  # type: ignore[union-attr]
    assert model_pr_auc > rule_pr_auc + 0.2
    confusion = re.search(r"TP (\d+)  FP (\d+)  FN (\d+)  TN (\d+)", out)
    assert confusion and sum(int(n) for n in confusion.groups()) == 400
    assert "monitoring logged 400 predictions of fraud_detection@1" in out
    assert "all services stopped cleanly" in out
    assert (
        "a transaction with amount -5.0 is refused: INVALID_ARGUMENT "
        "input.request_features.amount: -5.0 is below min 0.0"
    ) in out
    assert "promoted fraud_detection@1 to production" in out
    assert "serving has fraud_detection@1 READY as production" in out
    # The artifact registered and served is the run's, kept under --data-dir/runs/<id>/.
    assert list((tmp_path / "runs").glob("*/model.skops"))
    assert list((tmp_path / "runs").glob("*/model_card.md"))


def test_ctrl_c_stops_every_service(tmp_path: Path) -> None:
    # The services lead process groups of their own, so a terminal's Ctrl-C reaches only
    # the demo, which must stop them: none may outlive it.
    process = subprocess.Popen(
        [sys.executable, "-m", "mlbackend_cli", "demo", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    pids = []
    try:
        for line in process.stdout:
            row = re.match(r"^\s+\w+\s+127\.0\.0\.1:\d+\s+\S+\s+(\d+)$", line.rstrip())
            if row:
                pids.append(int(row.group(1)))
            if line.startswith("[2/4]"):
                os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
                break
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert len(pids) == 5
    assert "interrupted; stopping the suite" in out and "all services stopped cleanly" in out
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
