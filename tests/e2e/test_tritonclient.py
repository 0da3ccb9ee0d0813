"""An unchanged Open Inference Protocol client — ``tritonclient[grpc]`` — against serving.

tritonclient registers the same ``inference`` proto package and needs protobuf < 7, so
it runs in its own virtual environment and process (cached between runs). Under
``CI=true`` failing to build that environment fails the test; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier

from mlbackend_serving.core.model_dir import write_model_version

pytestmark = pytest.mark.e2e

VENV = Path(
    os.environ.get("MLBACKEND_TRITON_VENV", Path.home() / ".cache/mlbackend-test/tritonvenv")
)
FEATURES = [f"f{i}" for i in range(10)]

CLIENT_SCRIPT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as tc

address, rows_file = sys.argv[1], sys.argv[2]
rows = np.load(rows_file)
client = tc.InferenceServerClient(url=address)
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("fraud")}
meta = client.get_model_metadata("fraud", as_json=True)
out["inputs"] = meta["inputs"]
out["outputs"] = meta["outputs"]
tensor = tc.InferInput("input", list(rows.shape), "FP32")
tensor.set_data_from_numpy(rows)
result = client.infer("fraud", [tensor], model_version="1",
                      outputs=[tc.InferRequestedOutput("probabilities"),
                               tc.InferRequestedOutput("label")])
out["probabilities"] = result.as_numpy("probabilities").tolist()
out["label"] = result.as_numpy("label").tolist()
out["version"] = result.get_response().model_version
print(json.dumps(out))
"""


def _triton_python() -> Path:
    python = VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([python, "-c", "import tritonclient.grpc"], capture_output=True)
        if probe.returncode == 0:
            return python
    try:
        VENV.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "tritonclient[grpc]", "numpy"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        message = f"cannot build the tritonclient venv: {exc} {detail.decode(errors='replace')}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, HistGradientBoostingClassifier, np.ndarray]]:
    x, y = make_classification(n_samples=400, n_features=10, random_state=3)
    model = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(x, y)
    write_model_version(tmp_path / "models", "fraud", 1, model, FEATURES,
                        input_example=x[:2].tolist())  # fmt: skip
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlbackend_cli", "serve", "serving", "--port", "0",
         "--metrics-port", "0", "--model-dir", str(tmp_path / "models"),
         "--ready-file", str(ready), "--grace-seconds", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "serving never became ready"
            time.sleep(0.05)
        yield json.loads(ready.read_text())["address"], model, x
    finally:
        process.terminate()
        process.communicate(timeout=20)


def test_tritonclient_infers_like_sklearn(
    served: tuple[str, HistGradientBoostingClassifier, np.ndarray], tmp_path: Path
) -> None:
    python = _triton_python()
    address, model, x = served
    rows = x[:16].astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    run = subprocess.run(
        [python, script, address, tmp_path / "rows.npy"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["inputs"] == [{"name": "input", "datatype": "FP64", "shape": ["-1", "10"]}]
    assert [o["name"] for o in out["outputs"]] == ["label", "probabilities"]
    assert out["version"] == "1"
    expected = model.predict_proba(rows)
    np.testing.assert_allclose(np.array(out["probabilities"]), expected, rtol=0, atol=1e-6)
    assert out["label"] == expected.argmax(axis=1).tolist()
