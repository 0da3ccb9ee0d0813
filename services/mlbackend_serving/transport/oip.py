"""Open Inference Protocol v2 messages ↔ serving domain types."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend_runtime.errors import InvalidInput
from mlbackend_serving.core.inputs import RowsInput, Tensors
from mlbackend_serving.core.model import DType, OutputKind, Predictions
from mlbackend_serving.core.service import ModelState, PredictionResult, Selector, ServedVersion
from mlbackend_serving.transport.tensors import decode_inputs, metadata_tensor, output_tensor

SERVER_NAME = "mlbackend"
EXTENSIONS = ("model_repository",)
MATRIX_INPUT = "input"
_OIP_STATES = {
    ModelState.LOADING: "LOADING",
    ModelState.WARMING: "LOADING",
    ModelState.READY: "READY",
    ModelState.UNLOADING: "UNLOADING",
    ModelState.FAILED: "UNAVAILABLE",
}


def selector(version: str) -> Selector:
    """OIP versions are strings: digits name a version, anything else an alias."""
    if not version:
        return None
    if version.isdigit():
        if int(version) < 1:
            raise InvalidInput.field("model_version", "must be >= 1")
        return int(version)
    return version


def infer_call(request: oip.ModelInferRequest) -> tuple[str, Selector, RowsInput]:
    """The core's ``predict`` arguments for a ModelInfer request."""
    return request.model_name, selector(request.model_version), Tensors(decode_inputs(request))


def wanted_outputs(names: Sequence[str], predictions: Predictions) -> list[tuple[str, object]]:
    """The outputs a request names (all the model has when it names none), in order."""
    return pick_outputs(
        names,
        {
            "label": predictions.labels,
            "probabilities": predictions.probabilities,
            "value": predictions.values,
        },
    )


def pick_outputs(names: Sequence[str], outputs: dict[str, object]) -> list[tuple[str, object]]:
    """:func:`wanted_outputs` of ``outputs`` by name (None: the model has no such output)."""
    available = {k: v for k, v in outputs.items() if v is not None}
    for i, name in enumerate(names):
        if name not in available:
            raise InvalidInput.field(
                f"outputs[{i}].name", f"{name!r}: the model outputs {', '.join(available)}"
            )
    return [(name, available[name]) for name in names or available]


def infer_response(
    request: oip.ModelInferRequest, result: PredictionResult
) -> oip.ModelInferResponse:
    response = oip.ModelInferResponse(
        model_name=result.key.name, model_version=str(result.key.version), id=request.id
    )
    raw = bool(request.raw_input_contents)
    names = [o.name for o in request.outputs]
    for name, values in wanted_outputs(names, result.predictions):
        tensor, data = output_tensor(name, np.asarray(values), raw=raw)
        response.outputs.append(tensor)
        if data is not None:
            response.raw_output_contents.append(data)
    return response


def model_metadata(
    served: ServedVersion, versions: list[ServedVersion]
) -> oip.ModelMetadataResponse:
    """The resolved version's tensors; ``versions`` lists every loaded one."""
    model = served.model
    assert model is not None
    features = model.signature.features
    all_int = all(f.dtype is DType.INT64 for f in features)
    response = oip.ModelMetadataResponse(
        name=served.key.name,
        versions=[str(v.key.version) for v in versions],
        platform="sklearn",
        inputs=[metadata_tensor(MATRIX_INPUT, "INT64" if all_int else "FP64", [-1, len(features)])],
    )
    output = model.output
    if output.kind is OutputKind.CLASSIFIER:
        label_type = _label_type(output.classes)
        response.outputs.extend(
            [
                metadata_tensor("label", label_type, [-1]),
                metadata_tensor("probabilities", "FP64", [-1, len(output.classes)]),
            ]
        )
    else:
        response.outputs.append(metadata_tensor("value", "FP64", [-1]))
    return response


def _label_type(classes: tuple[object, ...]) -> str:
    if classes and all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    if classes and all(isinstance(c, float) for c in classes):
        return "FP64"
    return "BYTES"


def repository_index(
    available: dict[str, list[int]], loaded: list[ServedVersion], ready_only: bool
) -> oip.RepositoryIndexResponse:
    entries: dict[tuple[str, int], tuple[str, str]] = {
        (name, v): ("UNAVAILABLE", "not loaded") for name, vs in available.items() for v in vs
    }
    for served in loaded:
        entries[(served.key.name, served.key.version)] = (_OIP_STATES[served.state], served.reason)
    return oip.RepositoryIndexResponse(
        models=[
            oip.RepositoryIndexResponse.ModelIndex(
                name=name, version=str(version), state=state, reason=reason
            )
            for (name, version), (state, reason) in sorted(entries.items())
            if not ready_only or state == "READY"
        ]
    )
