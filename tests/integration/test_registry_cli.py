"""``mlbackend models …`` against a registry running in this test (the CLI in a subprocess)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import skops.io as sio  # type: ignore[import-untyped]
from sklearn.linear_model import LogisticRegression

from conftest import StartService


async def models(address: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlbackend_cli",
        "models",
        *args,
        "--registry",
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_register_promote_rollback_download(
    start_service: StartService, tmp_path: Path
) -> None:
    address = (await start_service("registry")).address
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.normal(size=60), rng.integers(0, 24, 60)])
    labels = np.where(rows[:, 0] > 0, "fraud", "ok")
    files = []
    for c in (0.5, 1.0):
        model = LogisticRegression(C=c).fit(rows, labels)
        model.feature_names_in_ = np.array(["amount", "hour"], dtype=object)  # as from a frame
        path = tmp_path / f"model-{c}.skops"
        sio.dump(model, path)
        files.append(path)

    code, out, err = await models(
        address,
        "register",
        "fraud",
        str(files[0]),
        "--metric",
        "pr_auc=0.7",
        "--tag",
        "team=risk",
        "--json",
    )
    assert code == 0, err
    v1 = json.loads(out)
    assert [f["name"] for f in v1["signature"]["features"]] == ["amount", "hour"]
    assert v1["output"]["kind"] == "OUTPUT_KIND_CLASSIFIER"
    assert [c["string_value"] for c in v1["output"]["classes"]] == ["fraud", "ok"]
    assert v1["metrics"] == {"pr_auc": 0.7} and v1["framework"]["name"] == "scikit-learn"
    assert (await models(address, "register", "fraud", str(files[1])))[0] == 0

    assert (await models(address, "promote", "fraud", "1", "--alias", "production"))[0] == 0
    code, out, _ = await models(address, "promote", "fraud", "2", "--alias", "production")
    assert code == 0 and "-> 2 (was 1)" in out
    code, out, _ = await models(address, "rollback", "fraud", "--alias", "production")
    assert code == 0 and "-> 1 (was 2)" in out
    code, out, _ = await models(address, "show", "fraud", "--json")
    assert json.loads(out)["registered_model"]["aliases"] == {"production": "1"}
    code, out, _ = await models(address, "versions", "fraud")
    assert out.splitlines()[0].startswith("models/fraud/versions/2")
    assert "[production]" in out.splitlines()[1]
    code, out, _ = await models(address, "list")
    assert out.startswith("models/fraud  latest=2  production->1")

    target = tmp_path / "downloaded.skops"
    code, out, err = await models(address, "download", "fraud@production", "-o", str(target))
    assert code == 0, err
    assert target.read_bytes() == files[0].read_bytes()

    code, _, err = await models(address, "promote", "fraud", "9", "--alias", "production")
    assert code == 1 and "NOT_FOUND" in err
