"""A loaded model version: its signature, its output and ``predict`` on a row matrix."""

from __future__ import annotations

import enum
import functools
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlbackend_runtime.errors import InvalidInput
from mlbackend_serving.core.fastpath import (
    Row,
    checked_fast_predict,
    checked_fast_proba,
    is_light,
    row_of,
)

Scalar = int | float | bool | str | None
Matrix = NDArray[np.float64]


class DType(enum.Enum):
    """Data type of one model input feature (numeric models: all become float64)."""

    INT64 = "int64"
    DOUBLE = "double"
    BOOL = "bool"


class OutputKind(enum.Enum):
    CLASSIFIER = "classifier"
    REGRESSOR = "regressor"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    dtype: DType = DType.DOUBLE
    nullable: bool = False
    """Null/NaN is a valid value (the model handles missing values); inf never is."""


@dataclass(frozen=True)
class Signature:
    """The ordered features a model consumes."""

    features: tuple[FeatureSpec, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if not names or len(set(names)) != len(names):
            raise InvalidInput.field("signature", "needs at least one feature, names unique")

    @functools.cached_property
    def all_double(self) -> bool:
        """Every feature is a plain double (no integer or boolean check per value)."""
        return all(f.dtype is DType.DOUBLE for f in self.features)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def index(self) -> dict[str, int]:
        """Position of each feature by name (built once: read on every request)."""
        return self._index

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {f.name: i for i, f in enumerate(self.features)}


@dataclass(frozen=True)
class OutputSpec:
    kind: OutputKind
    classes: tuple[Scalar, ...] = ()
    decision_threshold: float | None = None
    """Binary classifiers: P(classes[1]) at or above which the label is classes[1]."""

    def __post_init__(self) -> None:
        if self.decision_threshold is not None and not (
            self.kind is OutputKind.CLASSIFIER and len(self.classes) == 2
        ):
            raise InvalidInput.field("decision_threshold", "only for binary classifiers")
        if self.decision_threshold is not None and not 0.0 <= self.decision_threshold <= 1.0:
            raise InvalidInput.field("decision_threshold", "must be within [0, 1]")


@dataclass(frozen=True)
class Predictions:
    """Outputs for N rows; classifiers fill labels/probabilities/confidence, regressors values."""

    labels: NDArray[Any] | None = None
    probabilities: NDArray[np.float64] | None = None
    confidence: NDArray[np.float64] | None = None
    values: NDArray[np.float64] | None = None

    def __len__(self) -> int:
        for part in (self.labels, self.values, self.probabilities):
            if part is not None:
                return len(part)
        return 0

    def rows(self, start: int, stop: int) -> Predictions:
        """The predictions of rows ``start:stop`` (views, no copies)."""

        def part(a: NDArray[Any] | None) -> Any:
            return None if a is None else a[start:stop]

        return Predictions(
            part(self.labels), part(self.probabilities), part(self.confidence), part(self.values)
        )


@dataclass(frozen=True, slots=True)
class RowPrediction:
    """One row's outputs as plain numbers: what :class:`Predictions` holds for it."""

    label: Any = None
    """The predicted class (as in ``OutputSpec.classes``) when labels were asked for."""
    probabilities: tuple[float, ...] | None = None
    values: tuple[float, ...] | None = None
    """A regressor's value, as a 1-tuple."""


@dataclass(frozen=True)
class ModelKey:
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class LoadedModel:
    """A validated, loaded estimator with what serving needs to call it safely."""

    key: ModelKey
    signature: Signature
    output: OutputSpec
    estimator: Any
    sha256: str
    input_example: Matrix | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_in = getattr(self.estimator, "n_features_in_", None)
        if n_in is not None and int(n_in) != len(self.signature.features):
            raise InvalidInput.field(
                "signature",
                f"{len(self.signature.features)} features, but the model expects {n_in}",
            )
        if self.output.kind is OutputKind.CLASSIFIER:
            if not hasattr(self.estimator, "predict_proba"):
                raise InvalidInput.field("output.kind", "classifier without predict_proba")
            own = tuple(np.asarray(self.estimator.classes_).tolist())
            if self.output.classes and tuple(self.output.classes) != own:
                raise InvalidInput.field(
                    "output.classes", f"{list(self.output.classes)} differ from the model's {own}"
                )
            self.output = OutputSpec(self.output.kind, own, self.output.decision_threshold)
            self._predict_proba = checked_fast_proba(
                self.estimator, len(self.signature.features), self.input_example
            )
        else:
            if not hasattr(self.estimator, "predict"):
                raise InvalidInput.field("output.kind", "regressor without predict")
            self._predict_values = checked_fast_predict(
                self.estimator, len(self.signature.features), self.input_example
            )
        self._classes = np.asarray(self.output.classes, dtype=object)
        fast = (
            self._predict_values if self.output.kind is OutputKind.REGRESSOR
            else self._predict_proba
        )  # fmt: skip
        self.light = is_light(fast)
        """The model predicts through a light fast path (``fastpath.is_light``)."""
        self.row: Row | None = row_of(fast)
        """Its single-row form, where it has one (:meth:`predict_row`)."""

    def scores(self, rows: Matrix) -> Predictions:
        """``predict`` without labels and confidence: a classifier's probabilities, a
        regressor's values (what a request that asks for those alone needs)."""
        if self.output.kind is OutputKind.REGRESSOR:
            return self.predict(rows)
        return Predictions(probabilities=np.asarray(self._predict_proba(rows), dtype=np.float64))

    def predict(self, rows: Matrix) -> Predictions:
        """Run the model on validated rows (call off the event loop)."""
        if self.output.kind is OutputKind.REGRESSOR:
            values = np.asarray(self._predict_values(rows), dtype=np.float64).reshape(len(rows))
            return Predictions(values=values)
        proba = np.asarray(self._predict_proba(rows), dtype=np.float64)
        threshold = self.output.decision_threshold
        if threshold is not None:
            picked = (proba[:, 1] >= threshold).astype(np.intp)
        else:
            picked = proba.argmax(axis=1)
        confidence = proba[np.arange(len(proba)), picked]
        return Predictions(self._classes[picked], proba, confidence)

    def predict_row(self, values: array[float], labels: bool) -> RowPrediction:
        """:meth:`predict` (``labels``) or :meth:`scores` of one row (float64, finite,
        the signature's width) through :attr:`row`: the same numbers and the same
        label, without numpy (ModelInfer's single-row lane)."""
        assert self.row is not None
        out = self.row(values)
        if self.output.kind is OutputKind.REGRESSOR:
            return RowPrediction(values=out)
        if not labels:
            return RowPrediction(probabilities=out)
        threshold = self.output.decision_threshold
        # A binary threshold on the positive class, else the first of equal maxima
        # (argmax's rule), as :meth:`predict` picks.
        picked = int(out[1] >= threshold) if threshold is not None else out.index(max(out))
        return RowPrediction(self.output.classes[picked], out)
