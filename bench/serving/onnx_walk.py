"""ONNX Runtime against serving's C tree walk, in-process, on the serving benchmark's
two models: is ONNX Runtime a faster path worth keeping (issue 5, item 6)?

The parent (the project's venv) fits the models, times scikit-learn's ``predict_proba``
and serving's C walk (``fastpath.fast_proba``), and starts a child in a venv of its own
(``onnxruntime``, ``skl2onnx`` and the same scikit-learn version, installed on first
use under the bench cache). The child fits the same models on the same data, converts
them with skl2onnx and times ``InferenceSession.run`` on one thread. The child's
scikit-learn probabilities must equal the parent's (the same fitted model); the table
shows how far each fast path's probabilities are from scikit-learn's. Every timing is
the median of 5 rounds, each bounded by count and time.

    .venv/bin/python bench/serving/onnx_walk.py          # about a minute (plus the install)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROUNDS = 5
BUDGET_SECONDS = 0.3
MAX_CALLS = 20_000
PACKAGES = ["onnxruntime", "skl2onnx"]
PROBE = "import onnxruntime, skl2onnx"
SIZES = (1, 32)


def _models() -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    return {
        "rf-100-depth8": RandomForestClassifier(100, max_depth=8, random_state=0),
        "hgb": HistGradientBoostingClassifier(random_state=0),
    }


def _data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=20_000, n_features=10, n_informative=6, random_state=0)
    return x.astype(np.float32), y


def _seconds_per_call(fn: Callable[..., Any], *args: Any) -> float:
    fn(*args)
    means = []
    for _ in range(ROUNDS):
        calls, started = 0, time.perf_counter()
        while calls < MAX_CALLS and time.perf_counter() - started < BUDGET_SECONDS:
            fn(*args)
            calls += 1
        means.append((time.perf_counter() - started) / calls)
    return statistics.median(means)


def child() -> None:
    """In the ONNX venv: fit, convert, time; one JSON document on stdout."""
    import onnxruntime
    import skl2onnx

    x, y = _data()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    out: dict[str, Any] = {"versions": f"onnxruntime {onnxruntime.__version__}, "
                                       f"skl2onnx {skl2onnx.__version__}"}  # fmt: skip
    for name, model in _models().items():
        model.fit(x, y)
        entry: dict[str, Any] = {"sklearn": [model.predict_proba(x[:n]).tolist() for n in SIZES]}
        out[name] = entry
        try:
            onx = skl2onnx.to_onnx(model, x[:1], options={id(model): {"zipmap": False}})
        except Exception as exc:  # the converter's own error, reported as the finding
            cause: BaseException = exc
            while cause.__cause__ is not None:  # the root of the converter's chain
                cause = cause.__cause__
            entry["error"] = f"{type(cause).__name__}: {str(cause).splitlines()[0][:160]}"
            continue
        session = onnxruntime.InferenceSession(
            onx.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feed = session.get_inputs()[0].name
        entry["seconds"], entry["gap"] = [], []
        for n in SIZES:
            rows = x[:n]
            probabilities = session.run(None, {feed: rows})[1]
            entry["gap"].append(float(np.max(np.abs(probabilities - model.predict_proba(rows)))))
            entry["seconds"].append(_seconds_per_call(session.run, None, {feed: rows}))
    print(json.dumps(out))


def parent() -> None:
    import sklearn
    from threadpoolctl import threadpool_limits

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import benchkit  # bench/benchkit.py

    from mlbackend_serving.core import fastpath

    if not fastpath.NATIVE:
        raise SystemExit("the C walk is not built: run `make venv` (needs gcc)")
    python = benchkit.ensure_venv(
        benchkit.BENCH_CACHE / "onnxruntime",
        [*PACKAGES, f"scikit-learn=={sklearn.__version__}"],
        PROBE,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [python, __file__, "--role", "child"],
            capture_output=True, text=True, env=env, cwd=tmp, timeout=600, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the ONNX child failed:\n{done.stderr[-3000:]}")
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    x, y = _data()
    print(f"ONNX side: {theirs['versions']}; scikit-learn {sklearn.__version__}, one thread")
    print(f"{'model':15s} {'rows':>4s} {'sklearn µs':>11s} {'C walk µs':>10s} {'ONNX µs':>8s}"
          f" {'ONNX ÷ C':>8s} {'C max|ΔP|':>10s} {'ONNX max|ΔP|':>13s}")  # fmt: skip
    with threadpool_limits(1):  # as serving runs models
        for name, model in _models().items():
            model.fit(x, y)
            walk = fastpath.fast_proba(model, native=True)
            assert walk is not None, name
            entry = theirs[name]
            for i, n in enumerate(SIZES):
                rows = x[:n].astype(np.float64)
                expected = model.predict_proba(rows)
                # The child fitted the same model: its scikit-learn answers are ours.
                assert np.allclose(entry["sklearn"][i], expected, rtol=0, atol=1e-12), name
                own = _seconds_per_call(model.predict_proba, rows)
                mine = _seconds_per_call(walk, rows)
                gap = float(np.max(np.abs(walk(rows) - expected)))
                if "error" in entry:
                    onnx_cells = f"{'—':>8s} {'—':>8s}"
                    onnx_gap = "—"
                else:
                    seconds = entry["seconds"][i]
                    onnx_cells = f"{seconds * 1e6:8.1f} {seconds / mine:8.2f}"
                    onnx_gap = f"{entry['gap'][i]:.1e}"
                print(f"{name:15s} {n:4d} {own * 1e6:11.1f} {mine * 1e6:10.1f} {onnx_cells}"
                      f" {gap:10.1e} {onnx_gap:>13s}")  # fmt: skip
            if "error" in entry:
                print(f"  {name}: skl2onnx could not convert it: {entry['error']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("parent", "child"), default="parent")
    args = parser.parse_args()
    child() if args.role == "child" else parent()


if __name__ == "__main__":
    main()
