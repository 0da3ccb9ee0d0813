"""The light lane (``ServingCore.predict_light``): the usual OIP request to a model
whose trees are walked in C is predicted on the calling thread, with the same answer,
the same records and the same refusals as the general path, and only then."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from mlbackend.common.v1 import common_pb2
from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend.serving.v1 import serving_pb2 as pb
from mlbackend_models.loader import LoadPolicy
from mlbackend_runtime.errors import InvalidInput, NotFound
from mlbackend_serving.core import fastpath
from mlbackend_serving.core.inputs import Tensor, Tensors
from mlbackend_serving.core.model_dir import ModelDirectory, write_model_version
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.transport import threaded, wire

FEATURES = ["a", "b", "c", "d"]
X, Y = make_classification(n_samples=400, n_features=4, random_state=1)
ROWS = X[:5]


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[ServingCore]:
    if not fastpath.NATIVE:  # light means the C walk
        if os.environ.get("CI") == "true":
            pytest.fail("the C walk is not built")
        pytest.skip("C walk not built")
    forest = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(X, Y)
    example = X[:2].tolist()
    for name, model, wait in (
        ("forest", forest, 0),
        ("waiting", forest, 2),  # batches wait to fill: the queue decides
        ("linear", LogisticRegression().fit(X, Y), 0),  # scikit-learn's own predict_proba
    ):
        write_model_version(tmp_path, name, 1, model, FEATURES, input_example=example,
                            batching={"max_batch_size": 32, "max_wait_ms": wait})  # fmt: skip
    with ThreadPoolExecutor(2) as executor:
        core = ServingCore(executor, directory=ModelDirectory(tmp_path, LoadPolicy()),
                           threaded=True)  # fmt: skip
        for name in ("forest", "waiting", "linear"):
            await core.load(name, 1)
        yield core
        await core.close()


def _tensor(rows: np.ndarray, datatype: str = "FP64", name: str = "input") -> Tensor:
    dtype = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}[datatype]
    return Tensor(name, datatype, rows.shape, rows.astype(dtype).ravel())


async def test_the_light_lane_answers_what_the_general_path_answers(core: ServingCore) -> None:
    served = core.resolve("forest", None)
    calls = served.batcher.calls if served.batcher else 0
    for datatype in ("FP64", "FP32"):
        tensor = _tensor(ROWS, datatype)
        light = core.predict_light("forest", None, tensor, labels=True)
        general = core.predict_blocking("forest", None, Tensors([tensor]))
        assert light is not None and light.key == general.key
        for part in ("labels", "probabilities", "confidence"):
            assert np.array_equal(getattr(light.predictions, part),
                                  getattr(general.predictions, part))  # fmt: skip
        scores = core.predict_light("forest", 1, tensor, labels=False)
        assert scores is not None and scores.predictions.labels is None
        assert np.array_equal(scores.predictions.probabilities, general.predictions.probabilities)
    # Each counted like any request: health, and a call of the model.
    (report,) = core.health("forest", 1, None)
    assert report[1].request_count == 6 and report[1].error_count == 0
    assert served.batcher is not None and served.batcher.calls == calls + 6


async def test_anything_unusual_goes_the_general_way(core: ServingCore) -> None:
    nan = ROWS.copy()
    nan[1, 2] = np.nan
    unusual = {
        "a NaN": _tensor(nan),
        "an infinity": _tensor(ROWS * np.inf),
        "integers": _tensor(np.round(ROWS), "INT64"),
        "3 features of 4": _tensor(ROWS[:, :3]),
        "no rows": _tensor(ROWS[:0]),
        "one row's worth of values": Tensor("input", "FP64", (5, 4), ROWS[0].copy()),
        # [N, F] but named as a feature: the one-tensor-per-feature layout's
        "a tensor named as a feature": _tensor(ROWS, name="a"),
    }
    for what, tensor in unusual.items():
        assert core.predict_light("forest", None, tensor, labels=True) is None, what
    for model in ("waiting", "linear"):
        assert core.predict_light(model, None, _tensor(ROWS), labels=True) is None, model
    # The general path then says what is wrong, as it always did.
    with pytest.raises(InvalidInput) as raised:
        core.predict_blocking("forest", None, Tensors([unusual["3 features of 4"]]))
    assert "inputs[0].shape" in str(raised.value.violations)
    with pytest.raises(NotFound):
        core.predict_light("nothing", None, _tensor(ROWS), labels=True)


def test_labels_are_left_out_only_for_a_request_naming_probabilities_alone() -> None:
    def usual(*outputs: str) -> wire.UsualRequest:
        return wire.UsualRequest("m", "", "", "input", "FP64", (1, 4), bytes(32), False, outputs)

    assert not wire.wants_labels(usual("probabilities"))
    assert not wire.wants_labels(usual("probabilities", "probabilities"))
    for outputs in ((), ("label",), ("probabilities", "label"), ("probabilities", "value")):
        assert wire.wants_labels(usual(*outputs)), outputs


def _infer_bytes(model: str, rows: np.ndarray) -> bytes:
    message = oip.ModelInferRequest(model_name=model)
    message.inputs.add(name="input", datatype="FP64", shape=list(rows.shape))
    message.raw_input_contents.append(rows.astype("<f8").tobytes())
    return message.SerializeToString()


def _predict(model: str, rows: np.ndarray) -> pb.PredictRequest:
    request = pb.PredictRequest(model=model)
    for row in rows:
        request.vectors.add().values.extend(common_pb2.Value(double_value=v) for v in row)
    return request


async def test_only_one_row_to_a_model_that_answers_at_once_skips_the_pool(
    core: ServingCore,
) -> None:
    # What the thread front answers on gRPC's polling thread, as the message arrives;
    # everything else is queued for the prediction pool's threads.
    def at_once(request: object) -> bool:
        return threaded._answered_at_once(core, request)

    assert at_once(_infer_bytes("forest", ROWS[:1]))
    assert at_once(_predict("forest", ROWS[:1]))
    assert not at_once(_infer_bytes("forest", ROWS[:2]))
    assert not at_once(_predict("forest", ROWS[:2]))
    assert not at_once(_infer_bytes("waiting", ROWS[:1]))  # its batches wait to fill
    assert not at_once(_infer_bytes("linear", ROWS[:1]))  # scikit-learn's own call
    assert not at_once(_predict("linear", ROWS[:1]))
    assert not at_once(_infer_bytes("unknown", ROWS[:1]))
    assert not at_once(b"\xff\xff not a message")
