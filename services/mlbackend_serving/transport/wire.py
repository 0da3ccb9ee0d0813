"""ModelInfer on wire bytes: the usual request parsed in C, its response encoded here.

A single-row prediction of a 100-tree model takes the model ~4 µs; building the
request and response messages with protobuf and reading them back took ~12 µs more,
on a thread holding the GIL that gRPC's own threads wait for. So ModelInfer reaches
the thread front as bytes (``service_handlers(raw=...)``):

- the usual request (one FP32 or FP64 input; see ``_oipwire.c``) is read by the C
  parser straight into the :class:`~mlbackend_serving.core.inputs.Tensor` the general
  path would have decoded, and checked against the signature by the same code;
- anything else is parsed by protobuf and decoded as before, which also reports what
  is wrong with it;
- the usual request's response is written as bytes, the same bytes protobuf writes
  for the message ``oip.infer_response`` builds (the tests compare both on every
  output kind).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from mlbackend_runtime.protowire import varint as _varint
from mlbackend_serving.core.inputs import Tensor
from mlbackend_serving.core.model import ModelKey
from mlbackend_serving.core.service import PredictionResult, RowResult
from mlbackend_serving.transport.oip import pick_outputs, wanted_outputs
from mlbackend_serving.transport.tensors import DATATYPES, output_type

_oipwire: ModuleType | None
try:
    from mlbackend_serving import _oipwire
except ImportError:  # installed without a C compiler: protobuf parses every request
    _oipwire = None
    logging.getLogger("mlbackend.serving").warning(
        "mlbackend_serving._oipwire was not built: ModelInfer requests are parsed by protobuf"
    )

NATIVE = _oipwire is not None
"""Whether the C parser was built (CI requires it; see tests/unit/test_oip_wire.py)."""


class UsualRequest(NamedTuple):
    """A ModelInferRequest of the usual shape, as ``_oipwire.parse_infer_request`` reads it."""

    model_name: str
    model_version: str
    id: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    values: bytes
    """The input's values, little-endian, as the request carried them."""
    raw: bool
    """Whether they came in ``raw_input_contents`` (the response then answers raw too)."""
    outputs: tuple[str, ...]


def usual_request(data: bytes) -> UsualRequest | None:
    """``data`` read without protobuf, or None: parse it with protobuf instead."""
    if _oipwire is None:
        return None
    parsed = _oipwire.parse_infer_request(data)
    return None if parsed is None else UsualRequest(*parsed)


def input_tensor(request: UsualRequest) -> Tensor:
    """The tensor ``tensors.decode_inputs`` decodes from the same request."""
    dtype = DATATYPES[request.datatype][0]
    return Tensor(
        request.input_name, request.datatype, request.shape, np.frombuffer(request.values, dtype)
    )


def wants_labels(request: UsualRequest) -> bool:
    """Whether the prediction needs labels: unless the request names probabilities
    alone (naming none means all outputs; a wrong name's error lists them all)."""
    return set(request.outputs) != {"probabilities"}


# One-row requests' values: their datatype's array type code.
_ROW_TYPES = {"FP64": "d", "FP32": "f"}
_LITTLE_ENDIAN = sys.byteorder == "little"  # array reads the host's order; the wire is little


def row_values(request: UsualRequest) -> array[float] | None:
    """A one-row request's values as float64 (FP32 widened, which is exact), when every
    one is finite: what ``ServingCore.predict_row`` takes. None: anything else."""
    code = _ROW_TYPES.get(request.datatype)
    shape = request.shape
    if code is None or len(shape) != 2 or shape[0] != 1 or not _LITTLE_ENDIAN:
        return None
    values = array("d") if code == "d" else array("f")
    try:
        values.frombytes(request.values)
    except ValueError:  # not a whole number of values
        return None
    if len(values) != shape[1]:
        return None
    row = values if code == "d" else array("d", values)
    return row if all(map(math.isfinite, row)) else None


def infer_response(request: UsualRequest, result: PredictionResult) -> bytes:
    """The ModelInferResponse ``oip.infer_response`` makes for ``request``, as bytes."""
    outputs = wanted_outputs(request.outputs, result.predictions)
    return _response(request, result.key, (_output(n, v, raw=request.raw) for n, v in outputs))


def infer_row_response(request: UsualRequest, result: RowResult) -> bytes:
    """:func:`infer_response`'s bytes for a one-row answer, from its plain numbers."""
    row = result.row
    outputs = pick_outputs(
        request.outputs,
        {"label": row.label, "probabilities": row.probabilities, "value": row.values},
    )
    raw = request.raw
    return _response(request, result.key, (_row_output(n, v, raw) for n, v in outputs))


def _row_output(name: str, values: Any, raw: bool) -> tuple[bytes, bytes]:
    """:func:`_output` of one row's output: as ``Predictions`` would hold it, a label
    array of one, probabilities of shape [1, K] or a value of shape [1]."""
    if name == "label":
        return _label(values, raw)
    shape = (1, len(values)) if name == "probabilities" else (1,)
    return _fp64(name, shape, array("d", values).tobytes(), raw)


def _response(
    request: UsualRequest, key: ModelKey, outputs: Iterable[tuple[bytes, bytes]]
) -> bytes:
    """A response of ``outputs`` (each an InferOutputTensor's bytes and raw contents)."""
    body = bytearray(_names(key.name, key.version))
    _string(body, 3, request.id)
    raw_contents = []
    for tensor, contents in outputs:
        _field(body, 5, tensor)
        if request.raw:
            raw_contents.append(contents)
    for contents in raw_contents:
        _field(body, 6, contents)
    return bytes(body)


@functools.lru_cache(maxsize=1024, typed=True)  # typed: True and 1 are cached apart
def _label(label: object, raw: bool) -> tuple[bytes, bytes]:
    """The label output of one row predicting ``label``, as :func:`_output` encodes the
    model's classes."""
    return _output("label", np.array([label], dtype=object), raw=raw)


@functools.lru_cache(maxsize=1024)
def _names(model: str, version: int) -> bytes:
    """A response's first two fields; the same for every response of a version."""
    body = bytearray()
    _string(body, 1, model)
    _string(body, 2, str(version))
    return bytes(body)


@functools.lru_cache(maxsize=64)
def _tensor_head(name: str, datatype: str) -> bytes:
    body = bytearray()
    _string(body, 1, name)
    _string(body, 2, datatype)
    return bytes(body)


_FP64 = np.dtype(np.float64)


@functools.lru_cache(maxsize=256)
def _fp64_head(name: str, shape: tuple[int, ...]) -> bytes:
    """An FP64 output tensor's name, datatype and shape."""
    tensor = bytearray(_tensor_head(name, "FP64"))
    _packed(tensor, 3, _packed_varints(shape))
    return bytes(tensor)


def _fp64(name: str, shape: tuple[int, ...], data: bytes, raw: bool) -> tuple[bytes, bytes]:
    """An FP64 output (``data``: its values' little-endian bytes), the head made once
    per shape."""
    head = _fp64_head(name, shape)
    if raw:
        return head, data
    fp64_contents = _TAGS[7] + _varint(len(data)) + data  # InferTensorContents
    return head + _TAGS[5] + _varint(len(fp64_contents)) + fp64_contents, b""


# --- protobuf's wire format, what a response needs of it ------------------------------


def _field(body: bytearray, number: int, data: bytes) -> None:
    """A length-delimited field (a message, one element of repeated bytes)."""
    body += _TAGS[number]
    body += _varint(len(data))
    body += data


def _string(body: bytearray, number: int, text: str) -> None:
    """A string field; proto3 leaves an empty one out."""
    if text:
        _field(body, number, text.encode())


def _packed(body: bytearray, number: int, data: bytes) -> None:
    """A packed repeated field; an empty one is left out."""
    if data:
        _field(body, number, data)


# Tags of the length-delimited fields 1-8 (every one a response uses).
_TAGS = {n: bytes(((n << 3) | 2,)) for n in range(1, 9)}


def _packed_varints(values: Sequence[int]) -> bytes:
    if all(0 <= v < 0x80 for v in values):
        return bytes(values)  # each its own one-byte varint
    return b"".join([_varint(v) for v in values])


def _repeated_bytes(number: int, values: Sequence[bytes]) -> bytes:
    body = bytearray()
    for value in values:
        body += _TAGS[number]
        body += _varint(len(value))
        body += value
    return bytes(body)


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# InferTensorContents: datatype → (field number, typed encoding of the flat values).
_TYPED: dict[str, tuple[int, Callable[[NDArray[np.generic]], bytes]]] = {
    "BOOL": (1, lambda a: _packed_varints([int(v) for v in a.tolist()])),
    "INT64": (3, lambda a: _packed_varints(a.tolist())),
    "FP64": (7, lambda a: a.astype("<f8", copy=False).tobytes()),
    "BYTES": (8, lambda a: b""),  # repeated bytes are not packed: see _output
}


def _output(name: str, values: object, *, raw: bool) -> tuple[bytes, bytes]:
    """An InferOutputTensor's bytes and, when ``raw``, its raw contents (as
    ``tensors.output_tensor`` makes them)."""
    if type(values) is np.ndarray and values.dtype == _FP64 and values.size:
        # Probabilities and values, the usual outputs.
        return _fp64(name, values.shape, values.tobytes(), raw)
    datatype, converted = output_type(np.asarray(values))
    flat = converted.ravel()
    tensor = bytearray(_tensor_head(name, datatype))
    _packed(tensor, 3, _packed_varints(converted.shape))
    if raw:
        if datatype == "BYTES":
            contents = b"".join(
                len(b).to_bytes(4, "little") + b for b in (_as_bytes(v) for v in flat.tolist())
            )
        else:
            contents = flat.astype(DATATYPES[datatype][0], copy=False).tobytes()
        return bytes(tensor), contents
    number, typed = _TYPED[datatype]
    encoded = bytearray()
    if datatype == "BYTES":
        encoded += _repeated_bytes(number, [_as_bytes(v) for v in flat.tolist()])
    else:
        _packed(encoded, number, typed(flat))
    _field(tensor, 5, bytes(encoded))
    return bytes(tensor), b""
