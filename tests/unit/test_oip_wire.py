"""ModelInfer's wire lane must read and answer exactly as protobuf does.

- ``_oipwire.parse_infer_request`` (C) reads the request's bytes: where it answers, the
  tensor and fields are what protobuf and ``tensors.decode_inputs`` read from the same
  bytes; everything else is None, never an exception, for well-formed and malformed
  bytes alike.
- ``wire.infer_response`` writes the bytes protobuf writes for the message
  ``oip.infer_response`` builds, for every kind of output, raw or typed; so does
  ``wire.infer_row_response`` from the single-row lane's plain numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from mutations import accepted_as_the_oracle_reads

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend_runtime.errors import InvalidInput
from mlbackend_serving.core.model import (
    ModelKey,
    OutputKind,
    OutputSpec,
    Predictions,
    RowPrediction,
)
from mlbackend_serving.core.service import PredictionResult, RowResult
from mlbackend_serving.transport import oip as o
from mlbackend_serving.transport import wire
from mlbackend_serving.transport.tensors import decode_inputs

needs_wire = pytest.mark.skipif(not wire.NATIVE, reason="mlbackend_serving._oipwire is not built")


def request(
    values: Any,
    shape: list[int],
    datatype: str = "FP32",
    *,
    raw: bool = True,
    outputs: tuple[str, ...] = (),
    **fields: str,
) -> oip.ModelInferRequest:
    message = oip.ModelInferRequest(model_name=fields.pop("model_name", "m"), **fields)
    tensor = message.inputs.add(name="input", datatype=datatype, shape=shape)
    for name in outputs:
        message.outputs.add(name=name)
    array = np.asarray(values, dtype="<f4" if datatype == "FP32" else "<f8")
    if raw:
        message.raw_input_contents.append(array.tobytes())
    elif datatype == "FP32":
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    else:
        tensor.contents.fp64_contents.extend(array.ravel().tolist())
    return message


def by_protobuf(data: bytes) -> tuple[Any, ...] | None:
    """What the general path reads from ``data``, in the parser's terms (None where the
    request is not of the usual shape or not a message at all)."""
    try:
        message = oip.ModelInferRequest.FromString(data)
        tensors = decode_inputs(message)
    except Exception:  # any refusal: the parser must refuse too
        return None
    if (
        not message.model_name
        or message.parameters
        or len(tensors) != 1
        or tensors[0].datatype not in ("FP32", "FP64")
        or message.inputs[0].parameters
        or any(out.parameters for out in message.outputs)
    ):
        return None
    tensor = tensors[0]
    return (
        message.model_name,
        message.model_version,
        message.id,
        tensor.name,
        tensor.datatype,
        tensor.shape,
        tensor.values,
        bool(message.raw_input_contents),
        tuple(out.name for out in message.outputs),
    )


def parsed(data: bytes) -> tuple[Any, ...] | None:
    usual = wire.usual_request(data)
    if usual is None:
        return None
    tensor = wire.input_tensor(usual)
    return (*usual[:6], tensor.values, usual.raw, usual.outputs)


def same(got: tuple[Any, ...] | None, want: tuple[Any, ...] | None) -> bool:
    if got is None or want is None:
        return got is want
    values_got, values_want = got[6], want[6]
    return (
        got[:6] == want[:6]
        and got[7:] == want[7:]
        and values_got.dtype == values_want.dtype
        and np.array_equal(values_got, values_want, equal_nan=True)
    )


ROW = [0.5, -1.25, 3.0, 1e30, -0.0, 7.0]
USUAL = [
    request([ROW], [1, 6]),
    request([ROW], [1, 6], "FP64", model_version="3", id="req-1", outputs=("probabilities",)),
    request([ROW, ROW], [2, 6], raw=False),
    request([ROW], [1, 6], "FP64", raw=False, outputs=("label", "probabilities")),
    request([[np.nan, np.inf, -np.inf]], [1, 3]),  # values are the signature check's business
    request([ROW], [6], model_version="production"),  # so is the shape
    request(np.zeros((0, 6)), [0, 6]),
    request([ROW], [1, 6], model_name="é ✓ 𝄞", id="x" * 300),
]


@needs_wire
@pytest.mark.parametrize("message", USUAL)
def test_the_usual_requests_parse_as_protobuf_parses_them(message: oip.ModelInferRequest) -> None:
    data = message.SerializeToString()
    want = by_protobuf(data)
    assert want is not None
    assert same(parsed(data), want)


def tag(field: int, wire_type: int) -> bytes:
    return bytes([field << 3 | wire_type])


def length(body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([len(body)]) + body


def tensor_bytes(*fields: bytes) -> bytes:
    return tag(5, 2) + length(b"".join(fields))


NAME = tag(1, 2) + length(b"m")
INPUT_NAME = tag(1, 2) + length(b"input")
FP32 = tag(2, 2) + length(b"FP32")
SHAPE = tag(3, 2) + length(b"\x01\x02")
RAW = tag(7, 2) + length(np.array([1, 2], dtype="<f4").tobytes())


@needs_wire
def test_fields_in_any_order_parse_as_protobuf_parses_them() -> None:
    for data in [
        RAW + tensor_bytes(SHAPE, FP32, INPUT_NAME) + NAME,
        tensor_bytes(FP32, SHAPE) + NAME + RAW,  # no input name: ""
        NAME + tensor_bytes(tag(3, 2) + length(b"\x81\x00\x02"), FP32) + RAW,  # long varint
    ]:
        want = by_protobuf(data)
        assert want is not None and same(parsed(data), want)


def with_parameter(message: oip.ModelInferRequest) -> oip.ModelInferRequest:
    message.parameters["priority"].int64_param = 1
    return message


def two_inputs() -> oip.ModelInferRequest:
    message = request([ROW], [1, 6])
    message.inputs.add(name="other", datatype="FP32", shape=[1])
    message.raw_input_contents.append(b"\x00" * 4)
    return message


def tensor_parameter() -> oip.ModelInferRequest:
    message = request([ROW], [1, 6])
    message.inputs[0].parameters["content_type"].string_param = "np"
    return message


def output_parameter() -> oip.ModelInferRequest:
    message = request([ROW], [1, 6], outputs=("label",))
    message.outputs[0].parameters["binary_data"].bool_param = True
    return message


def both_sources() -> oip.ModelInferRequest:
    message = request([ROW], [1, 6])
    message.inputs[0].contents.fp32_contents.extend(ROW)
    return message


def int64_input() -> oip.ModelInferRequest:
    message = oip.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="input", datatype="INT64", shape=[1, 2])
    tensor.contents.int64_contents.extend([1, 2])
    return message


UNUSUAL = {
    "request parameters": with_parameter(request([ROW], [1, 6])).SerializeToString(),
    "two inputs": two_inputs().SerializeToString(),
    "tensor parameters": tensor_parameter().SerializeToString(),
    "output parameters": output_parameter().SerializeToString(),
    "raw and typed contents": both_sources().SerializeToString(),
    "no values at all": NAME + tensor_bytes(INPUT_NAME, FP32, SHAPE),
    "INT64": int64_input().SerializeToString(),
    "BYTES": NAME + tensor_bytes(tag(2, 2) + length(b"BYTES"), SHAPE) + RAW,
    "too few values": request([ROW], [2, 6]).SerializeToString(),
    "fp64 contents for FP32": request([ROW], [1, 6], "FP64", raw=False)
    .SerializeToString()
    .replace(b"FP64", b"FP32"),
    "unpacked fp32 contents": NAME
    + tensor_bytes(FP32, tag(3, 2) + length(b"\x01"), tag(5, 2) + length(tag(6, 5) + b"\0" * 4)),
    "a negative dimension": request([ROW], [-1, 6]).SerializeToString(),
    "no shape": NAME + tensor_bytes(FP32) + RAW,
    "nine dimensions": request([ROW], [1] * 8 + [6]).SerializeToString(),
    "no model name": tensor_bytes(FP32, SHAPE) + RAW,
    "model name twice": NAME + NAME + tensor_bytes(FP32, SHAPE) + RAW,
    "an unknown field": NAME + tensor_bytes(FP32, SHAPE) + RAW + tag(9, 0) + b"\x01",
    "invalid UTF-8 in the model name": tag(1, 2)
    + length(b"\xff")
    + tensor_bytes(FP32, SHAPE)
    + RAW,
    "invalid UTF-8 in an output name": NAME
    + tensor_bytes(FP32, SHAPE)
    + RAW
    + tag(6, 2)
    + length(tag(1, 2) + length(b"\xc3")),
    "a length past the end": NAME + tag(5, 2) + b"\x40" + FP32,
    "an eleven-byte varint": NAME + tensor_bytes(FP32, tag(3, 2) + length(b"\xff" * 10 + b"\x01")),
    "field number zero": b"\x02\x00" + NAME + tensor_bytes(FP32, SHAPE) + RAW,
    "empty": b"",
}


@needs_wire
@pytest.mark.parametrize("name", list(UNUSUAL))
def test_anything_unusual_is_left_to_protobuf(name: str) -> None:
    assert wire.usual_request(UNUSUAL[name]) is None


@needs_wire
def test_mangled_requests_are_parsed_as_protobuf_would_or_left_alone() -> None:
    """Truncated, bit-flipped and spliced bytes: whatever the parser accepts, protobuf
    parses to the same request (bounded: 6,000 variants, well under a second)."""
    seeds = [m.SerializeToString() for m in USUAL]
    accepted = accepted_as_the_oracle_reads(parsed, by_protobuf, seeds, same=same)
    assert accepted > 100  # the mutations left many requests valid: the oracle was used


# --- responses ---------------------------------------------------------------------------


def classifier(classes: tuple[Any, ...], picked: list[int]) -> PredictionResult:
    rng = np.random.default_rng(len(picked))
    proba = rng.dirichlet(np.ones(len(classes)), size=len(picked))
    labels = np.asarray(classes, dtype=object)[np.asarray(picked, dtype=np.intp)]
    output = OutputSpec(OutputKind.CLASSIFIER, classes, None)
    predictions = Predictions(labels, proba, proba.max(axis=1))
    return PredictionResult(ModelKey("fraud", 7), output, predictions)


def regressor(values: list[float]) -> PredictionResult:
    output = OutputSpec(OutputKind.REGRESSOR, (), None)
    return PredictionResult(ModelKey("price", 2), output, Predictions(values=np.array(values)))


RESULTS = {
    "int labels": classifier((0, 1), [1]),
    "negative int labels, 3 rows": classifier((-5, 2, 2**40), [0, 2, 1]),
    "string labels": classifier(("cat", "dog", "émeu"), [2, 0]),
    "bool labels": classifier((False, True), [1, 0, 1]),
    "float labels": classifier((0.5, 1.5), [1]),
    "regressor": regressor([1.5, -2.25, 1e-300]),
    "no rows": classifier((0, 1), []),
}


@pytest.mark.parametrize("name", list(RESULTS))
@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("outputs", [(), ("probabilities",), ("label",), ("value",)])
def test_responses_are_the_bytes_protobuf_writes(
    name: str, raw: bool, outputs: tuple[str, ...]
) -> None:
    result = RESULTS[name]
    message = request([ROW], [1, 6], raw=raw, outputs=outputs, id="r-9")
    usual = wire.UsualRequest("fraud", "", "r-9", "input", "FP32", (1, 6), b"", raw, outputs)
    try:
        want = o.infer_response(message, result).SerializeToString()
    except InvalidInput as exc:  # an output the model does not have: the same error
        with pytest.raises(InvalidInput) as raised:
            wire.infer_response(usual, result)
        assert raised.value.violations == exc.violations
        return
    assert wire.infer_response(usual, result) == want


def _one_row(result: PredictionResult) -> RowResult:
    """The single-row lane's answer for the first row of ``result``."""
    p = result.predictions
    return RowResult(
        result.key,
        RowPrediction(
            label=None if p.labels is None else p.labels[0],
            probabilities=None if p.probabilities is None else tuple(p.probabilities[0]),
            values=None if p.values is None else (float(p.values[0]),),
        ),
    )


ONE_ROW = {name: result for name, result in RESULTS.items() if len(result.predictions) >= 1}


@pytest.mark.parametrize("name", list(ONE_ROW))
@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize(
    "outputs", [(), ("probabilities",), ("label",), ("value",), ("probabilities", "label")]
)
def test_single_row_responses_are_the_bytes_protobuf_writes(
    name: str, raw: bool, outputs: tuple[str, ...]
) -> None:
    full = ONE_ROW[name]
    first = full.predictions.rows(0, 1)
    result = PredictionResult(full.key, full.output, first)
    message = request([ROW], [1, 6], raw=raw, outputs=outputs, id="r-9")
    usual = wire.UsualRequest("fraud", "", "r-9", "input", "FP32", (1, 6), b"", raw, outputs)
    try:
        want = o.infer_response(message, result).SerializeToString()
    except InvalidInput as exc:
        with pytest.raises(InvalidInput) as raised:
            wire.infer_row_response(usual, _one_row(result))
        assert raised.value.violations == exc.violations
        return
    assert wire.infer_row_response(usual, _one_row(result)) == want
