"""Turn request rows or tensors into the float64 matrix a model takes, or say what is wrong.

Every problem becomes a field violation with a path the caller can find in its own
request (``rows[2].amount``, ``vectors[0].values[3]``, ``inputs[1].shape``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mlbackend_runtime.errors import FieldViolation, InvalidInput
from mlbackend_serving.core.model import DType, Matrix, Signature

# A response listing thousands of violations helps nobody; the count is in the message.
MAX_VIOLATIONS = 20

NUMERIC_TENSOR_TYPES = frozenset({"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
                                  "UINT8", "UINT16", "UINT32", "UINT64"})  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    """One decoded OIP input: ``values`` is flat, row-major, already typed."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: NDArray[np.generic]


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        self.total = 0

    def add(self, field: str, description: str) -> None:
        self.total += 1
        if len(self.items) < MAX_VIOLATIONS:
            self.items.append(FieldViolation(field, description))

    def raise_if_any(self, what: str) -> None:
        if self.total:
            more = f" (first {len(self.items)} listed)" if self.total > len(self.items) else ""
            raise InvalidInput(f"{what}: {self.total} invalid field(s){more}", self.items)


def _expected(dtype: DType) -> str:
    return dtype.value


def _scalar_value(value: object, dtype: DType) -> float | None:
    """The float for a wire scalar, or None when its type does not fit the feature."""
    if value is None:
        return np.nan
    if dtype is DType.BOOL:
        return float(value) if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if dtype is DType.INT64:
        return float(value) if isinstance(value, int) else None
    return float(value) if isinstance(value, int | float) else None


def from_vectors(rows: Sequence[Sequence[object]], signature: Signature) -> Matrix:
    """Rows of values in signature order (``vectors`` of the Predict request)."""
    features = signature.features
    matrix = np.empty((len(rows), len(features)), dtype=np.float64)
    problems = _Violations()
    for i, row in enumerate(rows):
        if len(row) != len(features):
            problems.add(
                f"vectors[{i}].values",
                f"{len(row)} values where the signature has {len(features)} features",
            )
            continue
        for j, (value, spec) in enumerate(zip(row, features, strict=True)):
            number = _scalar_value(value, spec.dtype)
            if number is None:
                problems.add(
                    f"vectors[{i}].values[{j}]",
                    f"{spec.name}: expected {_expected(spec.dtype)}, got {type(value).__name__}",
                )
            else:
                matrix[i, j] = number
    problems.raise_if_any("invalid rows")
    return check_values(matrix, signature, row_field="vectors")


def from_maps(rows: Sequence[Mapping[str, object]], signature: Signature) -> Matrix:
    """Rows of named values (``rows`` of the Predict request), checked against the signature."""
    features = signature.features
    matrix = np.empty((len(rows), len(features)), dtype=np.float64)
    problems = _Violations()
    known = signature.index()
    for i, row in enumerate(rows):
        for name in row:
            if name not in known:
                problems.add(f"rows[{i}].{name}", "not a feature of the model's signature")
        for j, spec in enumerate(features):
            if spec.name not in row:
                if spec.nullable:
                    matrix[i, j] = np.nan
                else:
                    problems.add(f"rows[{i}].{spec.name}", "missing")
                continue
            value = row[spec.name]
            number = _scalar_value(value, spec.dtype)
            if number is None:
                problems.add(
                    f"rows[{i}].{spec.name}",
                    f"expected {_expected(spec.dtype)}, got {type(value).__name__}",
                )
            else:
                matrix[i, j] = number
    problems.raise_if_any("invalid rows")
    return check_values(matrix, signature, row_field="rows")


def from_tensors(tensors: Sequence[Tensor], signature: Signature) -> Matrix:
    """OIP inputs: one ``[N, F]`` tensor in signature order, or one ``[N]`` tensor per feature."""
    if (
        len(tensors) == 1
        and len(tensors[0].shape) == 2
        and tensors[0].name not in signature.index()
    ):
        return _from_matrix_tensor(tensors[0], signature)
    return _from_feature_tensors(tensors, signature)


def plain_matrix(tensor: Tensor, signature: Signature) -> Matrix | None:
    """What :func:`from_tensors` makes of ``[tensor]`` when that is nothing but a
    reshape: one ``[N, F]`` FP32 or FP64 tensor (N ≥ 1) in signature order, every value
    finite, every feature a double. None: anything else (``from_tensors`` checks it)."""
    shape = tensor.shape
    if (
        len(shape) != 2
        or shape[0] < 1
        or not plain_columns(signature, tensor.name, shape[1])
        or tensor.datatype not in _FLOATS
        or tensor.values.size != shape[0] * shape[1]
    ):
        return None
    matrix = tensor.values.astype(np.float64, copy=False).reshape(shape)
    return matrix if np.isfinite(matrix).all() else None


_FLOATS = frozenset({"FP32", "FP64"})


def plain_columns(signature: Signature, input_name: str, width: int) -> bool:
    """Whether an input tensor named ``input_name`` with ``width`` columns holds the
    signature's features as they are: one column per feature in order, every feature a
    double (so its rows need no check but finiteness), and not named after a feature
    (``from_tensors`` reads such a tensor as that feature's column)."""
    return (
        width == len(signature.features)
        and signature.all_double
        and input_name not in signature.index()
    )


def _check_datatype(tensor: Tensor, index: int, problems: _Violations) -> bool:
    if tensor.datatype not in NUMERIC_TENSOR_TYPES and tensor.datatype != "BOOL":
        problems.add(
            f"inputs[{index}].datatype",
            f"{tensor.datatype} is not accepted: the model takes numeric inputs "
            "(FP32, FP64 or INT64)",
        )
        return False
    return True


def _from_matrix_tensor(tensor: Tensor, signature: Signature) -> Matrix:
    problems = _Violations()
    n_features = len(signature.features)
    if _check_datatype(tensor, 0, problems):
        rows, cols = tensor.shape
        if cols != n_features or rows < 0:
            problems.add(
                "inputs[0].shape",
                f"{list(tensor.shape)}: expected [N, {n_features}] "
                f"(features {', '.join(signature.names)})",
            )
        elif tensor.values.size != rows * cols:
            problems.add(
                "inputs[0].contents",
                f"{tensor.values.size} elements for shape {list(tensor.shape)}",
            )
    problems.raise_if_any("invalid inputs")
    matrix = tensor.values.astype(np.float64, copy=False).reshape(tensor.shape)
    return check_values(matrix, signature, row_field="rows")


def _from_feature_tensors(tensors: Sequence[Tensor], signature: Signature) -> Matrix:
    problems = _Violations()
    known = signature.index()
    by_name: dict[str, tuple[int, Tensor]] = {}
    for k, tensor in enumerate(tensors):
        if tensor.name not in known:
            problems.add(
                f"inputs[{k}].name",
                f"{tensor.name!r} is not a feature; send one [N, {len(known)}] tensor or one "
                f"tensor per feature ({', '.join(signature.names)})",
            )
        elif tensor.name in by_name:
            problems.add(f"inputs[{k}].name", f"{tensor.name!r} given twice")
        else:
            by_name[tensor.name] = (k, tensor)
    for spec in signature.features:
        if spec.name not in by_name:
            problems.add(f"inputs.{spec.name}", "missing")
    problems.raise_if_any("invalid inputs")
    lengths = {t.shape[0] if t.shape else -1 for _, t in by_name.values()}
    n = next(iter(lengths))
    matrix = np.empty((max(n, 0), len(signature.features)), dtype=np.float64)
    for j, spec in enumerate(signature.features):
        k, tensor = by_name[spec.name]
        if not _check_datatype(tensor, k, problems):
            continue
        if tensor.shape not in {(n,), (n, 1)} or len(lengths) != 1 or n < 0:
            problems.add(f"inputs[{k}].shape", f"{list(tensor.shape)}: expected [N] or [N, 1] "
                         "with the same N for every feature")  # fmt: skip
        elif tensor.values.size != n:
            problems.add(f"inputs[{k}].contents", f"{tensor.values.size} elements, expected {n}")
        else:
            matrix[:, j] = tensor.values
    problems.raise_if_any("invalid inputs")
    return check_values(matrix, signature, row_field="rows")


def check_values(matrix: Matrix, signature: Signature, *, row_field: str) -> Matrix:
    """NaN only where the feature is nullable, never inf, integers where INT64/BOOL."""
    finite = np.isfinite(matrix)
    if signature.all_double and finite.all():
        return matrix
    problems = _Violations()
    nan = np.isnan(matrix)
    for j, spec in enumerate(signature.features):
        column = matrix[:, j]
        bad = ~finite[:, j] & ~(nan[:, j] & spec.nullable)
        if spec.dtype is DType.INT64:
            bad |= finite[:, j] & (column != np.round(column))
        elif spec.dtype is DType.BOOL:
            bad |= finite[:, j] & (column != 0) & (column != 1)
        for i in np.flatnonzero(bad)[:MAX_VIOLATIONS]:
            value = column[i]
            problems.add(f"{row_field}[{i}].{spec.name}", _describe(value, spec.dtype))
    problems.raise_if_any("invalid values")
    return matrix


def _describe(value: float, dtype: DType) -> str:
    if np.isnan(value):
        return "NaN (missing) is not allowed for this feature"
    if np.isinf(value):
        return f"{value} is not allowed"
    return f"{value} is not a valid {dtype.value}"


class RowsInput:
    """Rows as a request carries them; ``matrix`` checks them against a signature."""

    def matrix(self, signature: Signature) -> Matrix:
        raise NotImplementedError


@dataclass(frozen=True)
class Vectors(RowsInput):
    rows: Sequence[Sequence[object]]

    def matrix(self, signature: Signature) -> Matrix:
        return from_vectors(self.rows, signature)


@dataclass(frozen=True)
class Maps(RowsInput):
    rows: Sequence[Mapping[str, object]]

    def matrix(self, signature: Signature) -> Matrix:
        return from_maps(self.rows, signature)


@dataclass(frozen=True)
class Tensors(RowsInput):
    tensors: Sequence[Tensor]

    def matrix(self, signature: Signature) -> Matrix:
        return from_tensors(self.tensors, signature)
