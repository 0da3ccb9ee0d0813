"""Open Inference Protocol tensors ↔ numpy arrays (typed ``contents`` or raw little-endian)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from mlbackend.inference.v2 import grpc_predict_v2_pb2 as oip
from mlbackend_runtime.errors import InvalidInput
from mlbackend_serving.core.inputs import Tensor

# datatype → (little-endian numpy dtype, InferTensorContents field)
DATATYPES: dict[str, tuple[str, str]] = {
    "BOOL": ("|b1", "bool_contents"),
    "INT8": ("<i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "UINT8": ("<u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "FP16": ("<f2", "fp32_contents"),
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
    "BYTES": ("|O", "bytes_contents"),
}


def decode_inputs(request: oip.ModelInferRequest) -> list[Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput.field(
            "raw_input_contents",
            f"{len(raw)} entries for {len(request.inputs)} inputs: give one per input",
        )
    return [_decode(i, t, raw[i] if raw else None) for i, t in enumerate(request.inputs)]


def _decode(
    index: int, tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> Tensor:
    where = f"inputs[{index}]"
    if tensor.datatype not in DATATYPES:
        raise InvalidInput.field(f"{where}.datatype", f"unknown datatype {tensor.datatype!r}")
    shape = tuple(tensor.shape)
    if not shape or any(d < 0 for d in shape):
        raise InvalidInput.field(f"{where}.shape", f"{list(shape)} is not a valid shape")
    dtype, field = DATATYPES[tensor.datatype]
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidInput.field(f"{where}.contents", "set both contents and raw contents")
        values = _from_raw(where, tensor.datatype, dtype, raw)
    elif tensor.datatype == "BYTES":
        values = np.array(list(tensor.contents.bytes_contents), dtype=object)
    else:
        values = np.array(getattr(tensor.contents, field), dtype=dtype)
    expected = math.prod(shape)
    if values.size != expected:
        raise InvalidInput.field(
            f"{where}.contents", f"{values.size} elements for shape {list(shape)} ({expected})"
        )
    return Tensor(tensor.name, tensor.datatype, shape, values)


def _from_raw(where: str, datatype: str, dtype: str, raw: bytes) -> NDArray[np.generic]:
    if datatype == "BYTES":
        items: list[bytes] = []
        offset = 0
        while offset + 4 <= len(raw):
            size = int.from_bytes(raw[offset : offset + 4], "little")
            items.append(raw[offset + 4 : offset + 4 + size])
            offset += 4 + size
        if offset != len(raw):
            raise InvalidInput.field(f"{where}.raw", "BYTES elements are not length-prefixed")
        return np.array(items, dtype=object)
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise InvalidInput.field(
            f"{where}.raw", f"{len(raw)} bytes is not a whole number of {datatype} elements"
        )
    return np.frombuffer(raw, dtype=dtype)


def output_tensor(
    name: str, values: NDArray[np.generic], *, raw: bool
) -> tuple[oip.ModelInferResponse.InferOutputTensor, bytes | None]:
    """One output as a typed tensor, plus its raw bytes when the caller sent raw inputs."""
    datatype, array = output_type(values)
    tensor = oip.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=list(array.shape)
    )
    if raw:
        if datatype == "BYTES":
            return tensor, b"".join(
                len(b).to_bytes(4, "little") + b for b in (_as_bytes(v) for v in array.ravel())
            )
        return tensor, array.astype(DATATYPES[datatype][0], copy=False).tobytes()
    field = DATATYPES[datatype][1]
    flat = array.ravel()
    if datatype == "BYTES":
        getattr(tensor.contents, field).extend(_as_bytes(v) for v in flat)
    else:
        getattr(tensor.contents, field).extend(flat.tolist())
    return tensor, None


def output_type(values: NDArray[np.generic]) -> tuple[str, NDArray[np.generic]]:
    """The datatype an output is answered in, and its values as that type."""
    if values.dtype == object:
        sample = values.ravel()[:1].tolist()
        if sample and isinstance(sample[0], bool):
            return "BOOL", values.astype(bool)
        if sample and isinstance(sample[0], int):
            return "INT64", values.astype(np.int64)
        if sample and isinstance(sample[0], float):
            return "FP64", values.astype(np.float64)
        return "BYTES", values
    if values.dtype.kind == "b":
        return "BOOL", values
    if values.dtype.kind in "iu":
        return "INT64", values.astype(np.int64, copy=False)
    return "FP64", values.astype(np.float64, copy=False)


def _as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def metadata_tensor(
    name: str, datatype: str, shape: Sequence[int]
) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(name=name, datatype=datatype, shape=shape)
