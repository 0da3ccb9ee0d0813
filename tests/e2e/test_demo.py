"""`make demo`'s main job stays true at every commit."""

from __future__ import annotations

import re
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
