"""The YAML configuration of ``mlbackend train --config FILE`` (generic tabular problems).

Validated strictly: unknown keys, wrong types, an estimator outside the allow-list or
a parameter it does not have are all refused, each error naming its field
(``split.test_fraction: …``). Example::

    model: churn
    data: {path: churn.csv}              # CSV or Parquet; relative to this file
    entity_key: customer_id
    timestamp: snapshot_time             # optional; needed for a time split
    label: {column: churned, positive: yes}
    features:                            # or: feature_service: churn_features
      numeric: [tenure_months, monthly_charges]
      categorical: [plan, region]
    estimator: {name: random_forest, params: {n_estimators: 100}}
    split: {method: time, validation_fraction: 0.2, test_fraction: 0.2, seed: 7}
    threshold: {precision: 0.6}          # or {recall: 0.8}
    gate: {min_pr_auc: 0.4, min_roc_auc: 0.7}

A label with more than two values is a multiclass problem: its classes are the data's
values, sorted, unless ``label.classes`` lists them (that order is the class codes' and
the served probabilities'). ``label.positive``, ``threshold`` and the binary gate
minimums are refused for it; its gate takes ``min_accuracy`` and ``min_macro_f1``.
Whether a label is multiclass is known from the configuration when it names
``label.classes`` (or ``label.positive``: binary), else from the data file — the same
conflicts are then refused when the data is read, with the same messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlbackend_training.multiclass import MulticlassGateConfig
from mlbackend_training.pipeline import (
    ESTIMATORS,
    EstimatorSpec,
    GateConfig,
    SplitConfig,
    build_estimator,
)
from mlbackend_training.run_local import config_digest

# The registry's model id.
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ConfigError(ValueError):
    """The configuration is invalid; the message names each offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    path: Path
    """CSV or Parquet; a relative path is relative to the configuration file."""
    format: Literal["csv", "parquet"] | None = None
    """Default: from the file's suffix (``.parquet``/``.pq`` → parquet, else csv)."""

    def resolved_format(self) -> Literal["csv", "parquet"]:
        if self.format is not None:
            return self.format
        return "parquet" if self.path.suffix.lower() in (".parquet", ".pq") else "csv"


def as_text(value: Any) -> str:
    """A label or category value as text (booleans as ``false``/``true``, like YAML)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


class LabelSpec(_Strict):
    column: str = Field(min_length=1)
    positive: bool | int | str | None = None
    """Binary only: the positive class; needed unless the labels are 0/1 or false/true."""
    classes: list[bool | int | str] | None = Field(default=None, min_length=3)
    """Multiclass only: every class, in the order of the class codes (default: the
    data's values, sorted)."""

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if self.positive is not None and self.classes is not None:
            raise ValueError("give label.positive (binary) or label.classes (multiclass), not both")
        names = self.class_names or []
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"classes listed more than once: {twice}")
        return self

    @property
    def class_names(self) -> list[str] | None:
        return None if self.classes is None else [as_text(v) for v in self.classes]


class FeaturesSpec(_Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    """Encoded as integer codes (the registered version lists them) and one-hot encoded
    in the pipeline: serving takes numeric inputs only."""

    @model_validator(mode="after")
    def _some_and_unique(self) -> Self:
        names = [*self.numeric, *self.categorical]
        if not names:
            raise ValueError("name at least one numeric or categorical feature")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"listed more than once: {twice}")
        return self

    @property
    def names(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class EstimatorConfig(_Strict):
    name: str = Field(default="hist_gradient_boosting", description="one of the allow-list")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _allowed(cls, name: str) -> str:
        if name not in ESTIMATORS:
            raise ValueError(f"{name!r} is not allowed; choose one of {sorted(ESTIMATORS)}")
        return name

    @model_validator(mode="after")
    def _params_known(self) -> Self:
        try:
            build_estimator(self.spec(), 0)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"params: {exc}") from None
        return self

    def spec(self) -> EstimatorSpec:
        return EstimatorSpec(self.name, dict(self.params))


class SplitSpec(_Strict):
    method: Literal["time", "stratified"] = "time"
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _leaves_training(self) -> Self:
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction leave too little to train on")
        return self

    def split_config(self) -> SplitConfig:
        return SplitConfig(self.method, self.validation_fraction, self.test_fraction, 0.0)


class ThresholdSpec(_Strict):
    """Exactly one target: the decision threshold is chosen on the validation rows."""

    precision: float | None = Field(default=None, gt=0, le=1)
    recall: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.precision is None) == (self.recall is None):
            raise ValueError("give exactly one of precision or recall")
        return self

    @property
    def precision_target(self) -> float:
        """Recall at this precision is reported either way (0.5 with a recall target)."""
        return self.precision if self.precision is not None else 0.5


BINARY_GATE = ("min_pr_auc", "min_roc_auc", "min_recall_at_precision", "min_precision_at_recall")
MULTICLASS_GATE = ("min_accuracy", "min_macro_f1")


class GateSpec(_Strict):
    """Minimums on the test rows; the candidate must also not be worse than the current
    ``production`` version on the same rows (binary: PR-AUC and the threshold target's
    metric; multiclass: macro-F1)."""

    min_pr_auc: float = Field(default=0.0, ge=0, le=1)
    min_roc_auc: float = Field(default=0.5, ge=0, le=1)
    min_recall_at_precision: float = Field(default=0.0, ge=0, le=1)
    min_precision_at_recall: float = Field(default=0.0, ge=0, le=1)
    min_accuracy: float = Field(default=0.0, ge=0, le=1)
    min_macro_f1: float = Field(default=0.0, ge=0, le=1)
    must_beat_majority: bool = True
    champion_tolerance: float = Field(default=0.0, ge=0, le=1)

    def multiclass_gate_config(self) -> MulticlassGateConfig:
        return MulticlassGateConfig(
            min_accuracy=self.min_accuracy,
            min_macro_f1=self.min_macro_f1,
            must_beat_majority=self.must_beat_majority,
            champion_tolerance=self.champion_tolerance,
        )

    def gate_config(self) -> GateConfig:
        return GateConfig(
            min_pr_auc=self.min_pr_auc,
            min_roc_auc=self.min_roc_auc,
            min_recall_at_precision=self.min_recall_at_precision,
            must_beat_rule_scorer=False,  # the rule scorer is the fraud case study's
            champion_tolerance=self.champion_tolerance,
            min_precision_at_recall=self.min_precision_at_recall,
            must_beat_majority=self.must_beat_majority,
        )


class TabularConfig(_Strict):
    model: str = Field(pattern=MODEL_NAME)
    data: DataSpec
    entity_key: str = Field(min_length=1)
    timestamp: str | None = None
    label: LabelSpec
    features: FeaturesSpec | None = None
    feature_service: str | None = Field(default=None, min_length=1)
    estimator: EstimatorConfig = Field(default_factory=EstimatorConfig)
    split: SplitSpec = Field(default_factory=SplitSpec)
    threshold: ThresholdSpec | None = None
    """Binary only; default: precision 0.5."""
    gate: GateSpec = Field(default_factory=GateSpec)

    @property
    def binary_threshold(self) -> ThresholdSpec:
        return self.threshold or ThresholdSpec(precision=0.5)

    def problem_conflicts(self, classes: int) -> list[str]:
        """What this configuration sets that a label of ``classes`` classes cannot use."""
        out: list[str] = []
        gate_set = self.gate.model_fields_set
        if classes > 2:
            if self.label.positive is not None:
                out.append(
                    f"label.positive: only for a binary label; this one has {classes} classes"
                )
            if self.threshold is not None:
                out.append(
                    "threshold: a multiclass label has no decision threshold (the most "
                    "probable class is predicted); remove this section"
                )
            out += [
                f"gate.{name}: only for a binary label; a multiclass gate takes "
                f"{' / '.join(MULTICLASS_GATE)}"
                for name in BINARY_GATE
                if name in gate_set
            ]
        else:
            out += [
                f"gate.{name}: only for a multiclass label (3 or more classes)"
                for name in MULTICLASS_GATE
                if name in gate_set
            ]
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.features is None) == (self.feature_service is None):
            raise ValueError("give exactly one of features or feature_service")
        if self.split.method == "time" and self.timestamp is None:
            raise ValueError("split.method 'time' needs a timestamp column (or use stratified)")
        if self.feature_service is not None and self.timestamp is None:
            raise ValueError("feature_service needs a timestamp column (point-in-time reads)")
        used = [self.entity_key, self.label.column, *([self.timestamp] if self.timestamp else [])]
        clash = sorted(set(self.features.names if self.features else []) & set(used))
        if clash:
            raise ValueError(f"features {clash} are the entity key, timestamp or label")
        names = self.label.class_names
        known = len(names) if names else 2 if self.label.positive is not None else None
        if known is not None and (conflicts := self.problem_conflicts(known)):
            raise ValueError("; ".join(conflicts))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """sha256 of the validated configuration as canonical JSON (the data file by its
        name, so the same configuration elsewhere has the same digest)."""
        data = self.to_dict()
        data["data"]["path"] = self.data.path.name
        return config_digest(data)


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_config(data: Any, base_dir: Path | None = None) -> TabularConfig:
    """Validate a parsed mapping; a relative data path is resolved against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping of fields")
    try:
        config = TabularConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            lines.append(f"{_where(err['loc'])}: {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    if base_dir is not None and not config.data.path.is_absolute():
        data_spec = config.data.model_copy(update={"path": base_dir / config.data.path})
        config = config.model_copy(update={"data": data_spec})
    return config


def load_config(path: Path) -> TabularConfig:
    """Read and validate a YAML configuration file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, path.parent)
