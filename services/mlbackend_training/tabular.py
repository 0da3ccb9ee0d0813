"""``mlbackend train --config FILE``: a binary or multiclass classifier for any tabular
data file.

The same steps as the fraud flow (:mod:`pipeline`, :mod:`train_flow`), fed from a CSV
or Parquet file (read with pyarrow) instead of the synthetic generator:

1. read the configured columns and check them (present, a label of at least two
   classes that fits the configuration, numeric features numeric, no empty file) —
   :class:`DataError` otherwise;
2. the feature matrix: numeric columns as they are, categorical columns as integer
   codes of their sorted values (the version's ``params["categories"]`` lists them;
   serving takes numbers only) — or, with ``feature_service``, a point-in-time read of
   the feature store at each row's timestamp for its entity key (the configuration
   refuses a feature service without a timestamp column: point-in-time needs a time);
3. evaluate the current ``production`` version on this run's test rows (its own
   inputs: its own category codes, or its own feature service);
4. split / train (one-hot encoding of the codes in the pipeline) / evaluate next to
   the majority class / gate, and write the run directory — binary: with a threshold
   for the precision or recall target; multiclass (:mod:`multiclass`): none;
5. register with signature, output spec, baseline statistics, lineage (data file
   sha256, rows, time range when there is a timestamp column, config digest) and
   attachments; promote or record why not.

Labels are trained as class codes: binary, the positive class is 1 and the threshold
applies to its probability (serving's decision threshold); multiclass, codes
``0 … K-1`` in the class order, so the estimator's classes, the registered output
classes and serving's probability columns are that order and serving's label is the
most probable class's code. ``params["label"]`` maps each code to its value.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf import timestamp_pb2
from numpy.typing import NDArray
from tqdm import tqdm

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend.registry.v1 import registry_pb2 as r
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_training.config import TabularConfig, as_text
from mlbackend_training.fraud_features import FeatureMatrix
from mlbackend_training.fraud_store import historical_values
from mlbackend_training.multiclass import (
    MulticlassMetrics,
    MulticlassRun,
    class_probabilities,
    fit_evaluate_gate_multiclass,
    multiclass_gate,
    multiclass_metrics,
    registry_metrics,
)
from mlbackend_training.pipeline import (
    Champion,
    ClassifierMetrics,
    ModelRun,
    StepClock,
    Steps,
    evaluate,
    fit_evaluate_gate,
    split_dataset,
    threshold_for_recall,
    train_model,
)
from mlbackend_training.report import (
    render_card,
    render_multiclass_card,
    write_figures,
    write_multiclass_figures,
)
from mlbackend_training.run_local import (
    format_summary,
    make_run_dir,
    new_run_id,
    write_artifacts,
)
from mlbackend_training.train_flow import (
    ChampionEvaluation,
    binary_measure,
    binary_metrics,
    classifier_output,
    evaluate_champion,
    gate_with,
    input_example,
    publish,
    record_registration,
    refuse_if,
    register_version,
)

UNKNOWN_CODE = -1.0
"""A category a version's codes do not know (one-hot encodes as all zeros)."""
MAX_CLASSES = 100


class DataError(ValueError):
    """The data file does not fit the configuration; the message says what and where."""


@dataclass(frozen=True)
class TabularData:
    """The configured columns of the data file, checked."""

    path: Path
    sha256: str
    rows: int
    label: NDArray[np.int8]  # class codes; binary: 1 = the positive class
    classes: tuple[str, ...]  # the value of each code, as written in the file
    timestamp: NDArray[np.int64] | None  # seconds; None without a timestamp column
    entity: NDArray[np.str_]
    numeric: dict[str, NDArray[np.float64]]
    categorical: dict[str, list[str | None]]

    @property
    def multiclass(self) -> bool:
        return len(self.classes) > 2

    @property
    def positive_rate(self) -> float:
        return float(self.label.mean())

    @property
    def class_counts(self) -> list[int]:
        return [int(k) for k in np.bincount(self.label, minlength=len(self.classes))]

    def describe_label(self) -> str:
        counts = ", ".join(
            f"{n} {k:,}" for n, k in zip(self.classes, self.class_counts, strict=True)
        )
        if self.multiclass:
            return f"{len(self.classes)} classes ({counts})"
        return f"positive rate {self.positive_rate:.4f}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_table(config: TabularConfig) -> pa.Table:
    import pyarrow.csv
    import pyarrow.parquet

    path = config.data.path
    if not path.is_file():
        raise DataError(f"data.path: {path} does not exist")
    try:
        if config.data.resolved_format() == "parquet":
            return pyarrow.parquet.read_table(path)
        return pyarrow.csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"data.path: {path} cannot be read as "
                        f"{config.data.resolved_format()}: {exc}") from None  # fmt: skip


def _seconds(column: pa.ChunkedArray, name: str) -> NDArray[np.int64]:
    """A timestamp column as epoch seconds: timestamps, dates, ISO strings or numbers."""
    kind = column.type
    try:
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = pc.cast(column, pa.timestamp("s", tz="UTC"))
            kind = column.type
        if pa.types.is_date(kind):
            column = pc.cast(column, pa.timestamp("s"))
            kind = column.type
        if pa.types.is_timestamp(kind):
            column = pc.cast(pc.cast(column, pa.timestamp("s", tz=kind.tz)), pa.int64())
        elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise DataError(f"timestamp: column {name!r} of type {kind} is not a time")
    except pa.ArrowInvalid as exc:
        raise DataError(f"timestamp: column {name!r} does not parse as times: {exc}") from None
    if column.null_count:
        raise DataError(f"timestamp: column {name!r} has {column.null_count} empty value(s)")
    return np.asarray(column.to_numpy(), dtype=np.float64).astype(np.int64)


def _label(
    column: pa.ChunkedArray, config: TabularConfig
) -> tuple[NDArray[np.int8], tuple[str, ...]]:
    """Class codes of the label column and the value of each code (see the module doc)."""
    name = config.label.column
    if column.null_count:
        raise DataError(f"label: column {name!r} has {column.null_count} empty value(s)")
    raw = column.to_pylist()
    values = [as_text(v) for v in raw]
    distinct = [as_text(v) for v in sorted(set(raw))]  # the column's own order (numbers too)
    listed = config.label.class_names
    if listed is not None:
        unlisted = [v for v in distinct if v not in listed]
        absent = [v for v in listed if v not in distinct]
        if unlisted or absent:
            raise DataError(
                f"label.classes: {name!r} has values {unlisted[:10]} not listed"
                if unlisted
                else f"label.classes: {absent} do not occur in {name!r}"
            )
        classes: tuple[str, ...] = tuple(listed)
    elif len(distinct) > MAX_CLASSES:
        raise DataError(
            f"label: column {name!r} has {len(distinct)} distinct values; at most "
            f"{MAX_CLASSES} classes (is it a regression target?)"
        )
    elif len(distinct) > 2:
        classes = tuple(distinct)
    elif len(distinct) == 2:
        classes = _binary_classes(config, name, distinct)
    else:
        raise DataError(
            f"label: column {name!r} has {len(distinct)} distinct value(s) {distinct}; a "
            "classifier needs at least 2"
        )
    conflicts = config.problem_conflicts(len(classes))
    if conflicts:
        kind = "multiclass" if len(classes) > 2 else "binary"
        raise DataError(
            f"label: column {name!r} has {len(classes)} distinct values {list(classes)[:10]} "
            f"({kind}), which the configuration does not fit:\n  " + "\n  ".join(conflicts)
        )
    code = {v: i for i, v in enumerate(classes)}
    label = np.fromiter((code[v] for v in values), dtype=np.int8, count=len(values))
    return label, classes


def _binary_classes(config: TabularConfig, name: str, distinct: list[str]) -> tuple[str, str]:
    """(negative, positive) of a two-valued label."""
    if config.label.positive is not None:
        positive = as_text(config.label.positive)
        if positive not in distinct:
            raise DataError(f"label.positive: {positive!r} is not a value of {name!r} {distinct}")
    elif set(distinct) in ({"0", "1"}, {"false", "true"}):
        positive = distinct[1]
    else:
        raise DataError(f"label.positive: say which of {distinct} is the positive class")
    negative = next(v for v in distinct if v != positive)
    return negative, positive


def load_data(config: TabularConfig) -> TabularData:
    """Read and check the configured columns of the data file."""
    table = read_table(config)
    if table.num_rows == 0:
        raise DataError(f"data.path: {config.data.path} has no rows")
    wanted: list[tuple[str, str]] = [
        ("entity_key", config.entity_key),
        ("label.column", config.label.column),
    ]
    if config.timestamp:
        wanted.append(("timestamp", config.timestamp))
    if config.features is not None:
        wanted += [("features.numeric", n) for n in config.features.numeric]
        wanted += [("features.categorical", n) for n in config.features.categorical]
    missing = [
        f"{where}: column {name!r}" for where, name in wanted if name not in table.schema.names
    ]
    if missing:
        raise DataError(f"{config.data.path.name} lacks " + "; ".join(missing)
                        + f" (columns: {table.schema.names})")  # fmt: skip
    label, classes = _label(table[config.label.column], config)
    entity = table[config.entity_key]
    if entity.null_count:
        raise DataError(f"entity_key: column {config.entity_key!r} has empty values")
    numeric: dict[str, NDArray[np.float64]] = {}
    categorical: dict[str, list[str | None]] = {}
    if config.features is not None:
        for name in config.features.numeric:
            kind = table[name].type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                    or pa.types.is_boolean(kind)):  # fmt: skip
                raise DataError(f"features.numeric: column {name!r} is {kind}, not a number "
                                "(list it under features.categorical)")  # fmt: skip
            col = pc.cast(table[name], pa.float64()).to_numpy(zero_copy_only=False)
            numeric[name] = np.asarray(col, dtype=np.float64)
        for name in config.features.categorical:
            values = table[name].to_pylist()
            categorical[name] = [None if v is None else as_text(v) for v in values]
    timestamp = _seconds(table[config.timestamp], config.timestamp) if config.timestamp else None
    return TabularData(
        path=config.data.path,
        sha256=_file_sha256(config.data.path),
        rows=table.num_rows,
        label=label,
        classes=classes,
        timestamp=timestamp,
        entity=np.asarray([as_text(v) for v in entity.to_pylist()], dtype=np.str_),
        numeric=numeric,
        categorical=categorical,
    )


def vocabulary(data: TabularData) -> dict[str, list[str]]:
    """Each categorical column's values, sorted: a value's code is its position."""
    return {n: sorted({v for v in col if v is not None}) for n, col in data.categorical.items()}


def encode(data: TabularData, names: list[str], categories: dict[str, list[str]]) -> FeatureMatrix:
    """The model inputs ``names`` of every row; categories as codes of ``categories``."""
    columns: list[Any] = []
    for name in names:
        if name in categories:
            code = {v: float(i) for i, v in enumerate(categories[name])}
            raw = data.categorical.get(name)
            if raw is None:
                raise KeyError(f"input {name!r} is not a categorical column of this run")
            columns.append([math.nan if v is None else code.get(v, UNKNOWN_CODE) for v in raw])
        elif name in data.numeric:
            columns.append(data.numeric[name])
        else:
            raise KeyError(f"input {name!r} is not a feature of this run")
    return _matrix(data, tuple(names), np.column_stack(columns).astype(np.float64))


def _matrix(
    data: TabularData, names: tuple[str, ...], values: NDArray[np.float64]
) -> FeatureMatrix:
    rows = np.asarray([str(i) for i in range(data.rows)], dtype=np.str_)
    # Without a timestamp column the times are placeholders (zeros): only a stratified
    # split reads them, and the run records no time range (DatasetSplit.timed).
    times = data.timestamp if data.timestamp is not None else np.zeros(data.rows, dtype=np.int64)
    return FeatureMatrix(names, values, data.label, times, data.entity, rows)


def _event_time(seconds: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromSeconds(int(seconds))
    return out


@dataclass(frozen=True)
class ServiceRead:
    """A feature service's point-in-time training set and what the store resolved."""

    matrix: FeatureMatrix
    service: str  # "name@version"
    schema: tuple[c.FeatureSpec, ...]


async def from_feature_service(
    client: FeatureStoreClient, service: str, entity_key: str, data: TabularData
) -> ServiceRead:
    """The feature service's values for each row's entity as of the row's timestamp."""
    if data.timestamp is None:
        raise DataError("feature_service: point-in-time reads need a timestamp column")
    keys, times = data.entity.tolist(), data.timestamp.tolist()

    def entity_rows(part: list[int]) -> list[f.EntityRow]:
        return [
            f.EntityRow(
                entity_key=c.EntityKey(join_keys={entity_key: c.Value(string_value=keys[i])}),
                event_time=_event_time(times[i]),
            )
            for i in part
        ]

    read = await historical_values(client, service, data.rows, entity_rows)
    if read.strings:
        raise DataError(
            f"feature_service: {service} returns text for {sorted(read.strings)}; serving takes "
            "numeric inputs only (store category codes in the feature view)"
        )
    return ServiceRead(_matrix(data, read.names, read.values), read.service, read.schema)


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class TabularInputs:
    """What a run trains on: the configuration, the data file and the feature matrix
    (with the category codes, or the resolved feature service and its output schema)."""

    config: TabularConfig
    data: TabularData
    features: FeatureMatrix
    categories: dict[str, list[str]]
    feature_service: str = ""  # "name@version" as the store resolved it
    service_schema: tuple[c.FeatureSpec, ...] = ()

    @property
    def timed(self) -> bool:
        return self.data.timestamp is not None

    def summary(self) -> dict[str, Any]:
        data, cfg = self.data, self.config
        times = data.timestamp
        about: dict[str, Any] = {
            "file": data.path.name,
            "format": cfg.data.resolved_format(),
            "sha256": data.sha256,
            "rows": data.rows,
            "classes": {str(i): v for i, v in enumerate(data.classes)},
            "class_counts": data.class_counts,
            "from_ts": None if times is None else int(times.min()),
            "to_ts": None if times is None else int(times.max()),
            "config_sha256": cfg.digest(),
            "feature_service": self.feature_service or None,
        }
        if not data.multiclass:
            about["positive_rate"] = data.positive_rate
        return {
            "seed": cfg.split.seed,
            "problem": "multiclass" if data.multiclass else "binary",
            "config": cfg.to_dict(),
            "data": about,
        }

    def signature(self, train: FeatureMatrix) -> list[c.FeatureSpec]:
        """The inputs in matrix order: a feature service's output dtypes; else category
        codes as INT64 (nullable) and numbers as DOUBLE (nullable if a training value is
        missing)."""
        missing = {n for n in train.names if np.isnan(train.column(n)).any()}
        if self.service_schema:
            return [
                c.FeatureSpec(name=s.name, dtype=s.dtype, nullable=s.nullable or s.name in missing)
                for s in self.service_schema
            ]
        return [
            c.FeatureSpec(name=n, dtype=c.DATA_TYPE_INT64, nullable=True)
            if n in self.categories
            else c.FeatureSpec(name=n, dtype=c.DATA_TYPE_DOUBLE, nullable=n in missing)
            for n in self.features.names
        ]

    def categorical(self) -> list[bool]:
        cfg = self.config
        return [
            n in (cfg.features.categorical if cfg.features else ()) for n in self.features.names
        ]


@dataclass(frozen=True)
class TabularResult:
    run_id: str
    directory: Path
    inputs: TabularInputs
    run: ModelRun | MulticlassRun
    summary: dict[str, Any]
    version: int
    promoted: bool
    decision: str
    champion_version: int | None


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _card_parts(inputs: TabularInputs) -> tuple[list[str], list[tuple[str, str]]]:
    """The data lines and feature rows both kinds of card show."""
    cfg, data = inputs.config, inputs.data
    source = (
        f"feature service `{inputs.feature_service}`, point-in-time at each row's timestamp"
        if inputs.feature_service
        else f"column of `{data.path.name}`"
    )
    rows: list[tuple[str, str]] = []
    for name in inputs.features.names:
        if name in inputs.categories:
            codes = ", ".join(f"{i}={v}" for i, v in enumerate(inputs.categories[name]))
            rows.append((name, f"{source}, categorical as codes ({codes}; other = -1)"))
        else:
            rows.append((name, f"{source}, numeric"))
    span = (
        f"{_iso(int(data.timestamp.min()))} → {_iso(int(data.timestamp.max()))} UTC"
        if data.timestamp is not None
        else "no timestamp column"
    )
    lines = [
        f"- data file `{data.path.name}` ({cfg.data.resolved_format()}), sha256 "
        f"`{data.sha256}`: {data.rows:,} rows, {span}",
        f"- entity key `{cfg.entity_key}`; configuration sha256 `{cfg.digest()}`",
    ]
    return lines, rows


_CODES_NOTE = (
    "Categorical inputs are sent as the integer codes listed (serving takes numbers); the "
    "pipeline one-hot encodes them, unknown codes as all zeros."
)


def _binary_card(inputs: TabularInputs, run: ModelRun, run_id: str, sha256: str) -> str:
    cfg, data = inputs.config, inputs.data
    data_lines, feature_rows = _card_parts(inputs)
    target = cfg.binary_threshold
    return render_card(
        title=f"Model card: {cfg.model} — run `{run_id}`",
        run=run,
        estimator=cfg.estimator.spec(),
        data_lines=[
            *data_lines,
            f"- label `{cfg.label.column}`: positive class `{data.classes[1]}` (= 1), negative "
            f"`{data.classes[0]}` (= 0); positive rate {data.positive_rate:.4f}",
            f"- threshold target: {'precision' if target.precision else 'recall'} ≥ "
            f"{target.precision or target.recall:g}",
        ],
        feature_rows=feature_rows,
        feature_note=_CODES_NOTE,
        scorers_note="Same rows for both scorers. Baseline: the majority class only (the rule "
        "scorer belongs to the fraud case study). Decisions: model at the threshold chosen on "
        "validation; majority always its class.",
        rows_noun="rows",
        positive_noun="positive",
        extra={"artifact sha256": f"`{sha256}`"},
    )


def _multiclass_card(inputs: TabularInputs, run: MulticlassRun, run_id: str, sha256: str) -> str:
    cfg, data = inputs.config, inputs.data
    data_lines, feature_rows = _card_parts(inputs)
    codes = ", ".join(f"{i}=`{v}`" for i, v in enumerate(data.classes))
    order = "as listed in label.classes" if cfg.label.classes else "the data's values, sorted"
    return render_multiclass_card(
        title=f"Model card: {cfg.model} — run `{run_id}`",
        run=run,
        estimator=cfg.estimator.spec(),
        data_lines=[
            *data_lines,
            f"- label `{cfg.label.column}`: {data.describe_label()}; class codes {codes} "
            f"({order}) — serving's label is the code, its probabilities in code order",
        ],
        feature_rows=feature_rows,
        feature_note=_CODES_NOTE,
        extra={"artifact sha256": f"`{sha256}`"},
    )


def _signature_summary(inputs: TabularInputs) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": n, "dtype": "int64" if n in inputs.categories else "float64"}
            for n in inputs.features.names
        ],
        "output": {"kind": "classifier", "classes": list(range(len(inputs.data.classes)))},
    }


def _progress(config: TabularConfig, steps: int, progress: bool) -> Any:
    return tqdm(total=steps, desc=f"train {config.model}", unit="step", disable=not progress,
                file=sys.stderr)  # fmt: skip


def _write(
    inputs: TabularInputs,
    directory: Path,
    run: ModelRun | MulticlassRun,
    card: Callable[[str], str],
    figures: Callable[[Path], object],
) -> dict[str, Any]:
    summary = {
        **inputs.summary(),
        **run.evaluation_summary(),
        "categories": inputs.categories,
        "signature": _signature_summary(inputs),
    }
    return write_artifacts(directory, run, card, summary, figures)


def _new_run(inputs: TabularInputs, data_dir: Path) -> tuple[str, Path]:
    run_id = new_run_id({**inputs.config.to_dict(), "data_sha256": inputs.data.sha256})
    return run_id, make_run_dir(data_dir, run_id)


def run_binary(
    inputs: TabularInputs,
    data_dir: Path,
    *,
    champion: Champion[ClassifierMetrics] | None = None,
    problem: str | None = None,
    progress: bool = False,
) -> tuple[str, Path, ModelRun, dict[str, Any]]:
    """Train, threshold, evaluate, gate and write the run directory; no services."""
    config, data = inputs.config, inputs.data
    run_id, directory = _new_run(inputs, data_dir)
    target = config.binary_threshold
    steps = Steps(
        train=partial(train_model, categorical=inputs.categorical()),
        evaluate=partial(evaluate, baselines={}),  # majority only: no rule scorer here
        gate=gate_with(problem),
    )
    if target.recall is not None:
        recall = target.recall
        steps = replace(
            steps,
            threshold=lambda label, score, precision: threshold_for_recall(
                label, score, recall, precision
            ),
        )
    with _progress(config, 5, progress) as bar:
        run = fit_evaluate_gate(
            inputs.features,
            split=config.split.split_config(),
            estimator=config.estimator.spec(),
            seed=config.split.seed,
            precision_target=target.precision_target,
            gate=config.gate.gate_config(),
            dataset_digest=data.sha256,
            steps=steps,
            champion=champion,
            clock=StepClock(lambda _name: bar.update()),
            timed=inputs.timed,
        )
    summary = _write(
        inputs,
        directory,
        run,
        lambda sha256: _binary_card(inputs, run, run_id, sha256),
        lambda d: write_figures(run.evaluation, d, data.classes),
    )
    return run_id, directory, run, summary


def run_multiclass(
    inputs: TabularInputs,
    data_dir: Path,
    *,
    champion: Champion[MulticlassMetrics] | None = None,
    problem: str | None = None,
    progress: bool = False,
) -> tuple[str, Path, MulticlassRun, dict[str, Any]]:
    """Train, evaluate, gate and write the run directory of a multiclass label."""
    config, data = inputs.config, inputs.data
    run_id, directory = _new_run(inputs, data_dir)
    with _progress(config, 4, progress) as bar:
        run = fit_evaluate_gate_multiclass(
            inputs.features,
            classes=data.classes,
            split=config.split.split_config(),
            estimator=config.estimator.spec(),
            seed=config.split.seed,
            train=partial(train_model, categorical=inputs.categorical()),
            gate=lambda ev, cfg, champ: refuse_if(problem, multiclass_gate(ev, cfg, champ)),
            gate_config=config.gate.multiclass_gate_config(),
            dataset_digest=data.sha256,
            champion=champion,
            clock=StepClock(lambda _name: bar.update()),
            timed=inputs.timed,
        )
    summary = _write(
        inputs,
        directory,
        run,
        lambda sha256: _multiclass_card(inputs, run, run_id, sha256),
        lambda d: write_multiclass_figures(run, d),
    )
    return run_id, directory, run, summary


def multiclass_measure(
    classes: tuple[str, ...],
) -> Callable[[Any, FeatureMatrix, FeatureMatrix, r.ModelVersion], MulticlassMetrics]:
    """A multiclass champion's metrics on the test rows; it must know the same classes."""

    def measure(
        estimator: Any, inputs: FeatureMatrix, test: FeatureMatrix, champion: r.ModelVersion
    ) -> MulticlassMetrics:
        label = json.loads(champion.params.get("label", "{}"))
        theirs = [label.get(str(i)) for i in range(len(champion.output.classes))]
        if theirs != list(classes):
            raise ValueError(f"its classes are {theirs}, this run's are {list(classes)}")
        proba = class_probabilities(estimator, inputs, len(classes))
        return multiclass_metrics(test.label, proba, classes)

    return measure


async def train_from_config(
    config: TabularConfig,
    data_dir: Path,
    registry: RegistryClient,
    features: FeatureStoreClient | None = None,
    *,
    promote: bool = True,
    progress: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> TabularResult:
    """Read, train, gate, register and promote (or note why not) once; see the module doc."""

    def say(text: str) -> None:
        if on_progress is not None:
            on_progress(text)

    data = await asyncio.to_thread(load_data, config)
    say(f"read {data.rows:,} rows of {data.path.name} ({data.describe_label()})")
    if config.feature_service is not None:
        if features is None:
            raise ValueError("feature_service needs a feature store address")
        read = await from_feature_service(features, config.feature_service, config.entity_key, data)
        inputs = TabularInputs(config, data, read.matrix, {}, read.service, read.schema)
        say(f"feature store: point-in-time training set of {data.rows:,} rows from {read.service}")
    else:
        assert config.features is not None
        categories = vocabulary(data)
        inputs = TabularInputs(config, data, encode(data, config.features.names, categories),
                               categories)  # fmt: skip

    test = split_dataset(inputs.features, config.split.split_config(), config.split.seed).test

    async def champion_inputs(champion: r.ModelVersion) -> FeatureMatrix:
        names = [s.name for s in champion.signature.features]
        if champion.feature_service:
            if features is None:
                raise ValueError(f"it reads feature service {champion.feature_service}")
            full = (
                await from_feature_service(
                    features, champion.feature_service, config.entity_key, data
                )
            ).matrix
        else:
            codes = json.loads(champion.params.get("categories", "{}"))
            full = encode(data, names, codes)
        return full.take(np.asarray([int(i) for i in test.transaction_id], dtype=np.intp))

    run: ModelRun | MulticlassRun
    champ: ChampionEvaluation[MulticlassMetrics] | ChampionEvaluation[ClassifierMetrics]
    if data.multiclass:
        champ = await evaluate_champion(
            registry, config.model, test, champion_inputs, multiclass_measure(data.classes)
        )
        say_champion(say, config.model, champ)
        run_id, directory, run, summary = await asyncio.to_thread(
            run_multiclass, inputs, data_dir,
            champion=champ.champion, problem=champ.problem, progress=progress,
        )  # fmt: skip
    else:
        target = config.binary_threshold
        champ = await evaluate_champion(
            registry, config.model, test, champion_inputs,
            binary_measure(target.precision_target, target.recall),
        )  # fmt: skip
        say_champion(say, config.model, champ)
        run_id, directory, run, summary = await asyncio.to_thread(
            run_binary, inputs, data_dir,
            champion=champ.champion, problem=champ.problem, progress=progress,
        )  # fmt: skip
    version = await _register(registry, directory, summary, inputs, run)
    promoted, decision = await publish(
        registry, config.model, version.version, directory, run.gate, promote
    )
    record_registration(directory, summary, {
        "model": config.model, "version": version.version, "promoted": promoted,
        "decision": decision, "champion_version": champ.version,
        "feature_service": inputs.feature_service or None,
    })  # fmt: skip
    return TabularResult(run_id, directory, inputs, run, summary, version.version, promoted,
                         decision, champ.version)  # fmt: skip


def format_result(result: TabularResult) -> str:
    """The run's evaluation, what was registered and the gate's decision, as text."""
    summary = result.summary
    if isinstance(result.run, ModelRun):
        head = format_summary(summary)
    else:
        ev = result.run.evaluation
        rows = [("model", ev.model), (f"majority ({ev.majority_class})", ev.majority)]
        head = "\n".join(
            [
                f"run {summary['run_id']}  seed {summary['seed']}  {result.inputs.data.rows:,} "
                f"rows of {summary['data']['file']}, {result.inputs.data.describe_label()}",
                f"test rows: {ev.model.rows:,}; predicted class = the most probable",
                f"{'':22} accuracy macro-F1 weighted-F1 log-loss",
                *(
                    f"{name:22} {m.accuracy:8.3f} {m.macro_f1:8.3f} {m.weighted_f1:11.3f} "
                    f"{m.log_loss:8.3f}"
                    for name, m in rows
                ),
                "per class (precision / recall / F1): "
                + ", ".join(
                    f"{n} {c.precision:.3f}/{c.recall:.3f}/{c.f1:.3f}"
                    for n, c in ev.model.per_class.items()
                ),
                f"gate: {summary['gate']['reason']}",
                f"artifacts: {summary['run_dir']}",
            ]
        )
    model = result.inputs.config.model
    return f"{head}\nregistered {model}@{result.version}\n{result.decision}"


def say_champion(
    say: Callable[[str], None],
    model: str,
    champ: ChampionEvaluation[MulticlassMetrics] | ChampionEvaluation[ClassifierMetrics],
) -> None:
    if champ.version is not None:
        say(f"champion {model}@{champ.version} evaluated on the same test rows"
            + (f": {champ.problem}" if champ.problem else ""))  # fmt: skip


async def _register(
    registry: RegistryClient,
    directory: Path,
    summary: dict[str, Any],
    inputs: TabularInputs,
    run: ModelRun | MulticlassRun,
) -> r.ModelVersion:
    cfg, data, train = inputs.config, inputs.data, run.split.train
    digest = cfg.digest()
    span = (
        f", {_iso(int(data.timestamp.min()))} → {_iso(int(data.timestamp.max()))} UTC"
        if data.timestamp is not None
        else ""
    )
    params = {
        "estimator": cfg.estimator.name,
        "estimator_params": json.dumps(cfg.estimator.params, sort_keys=True),
        "seed": str(cfg.split.seed),
        "split": json.dumps(cfg.split.model_dump(mode="json"), sort_keys=True),
        "gate": json.dumps(cfg.gate.model_dump(mode="json"), sort_keys=True),
        "label": json.dumps(
            {"column": cfg.label.column, **{str(i): v for i, v in enumerate(data.classes)}}
        ),
        "categories": json.dumps(inputs.categories, sort_keys=True),
        "config_sha256": digest,
    }
    if isinstance(run, MulticlassRun):
        output = classifier_output(len(data.classes))
        metrics = registry_metrics(run.evaluation)
        decided = (
            f"argmax of {len(data.classes)} classes, macro-F1 {run.evaluation.model.macro_f1:.4f}"
        )
    else:
        output = classifier_output(2, run.threshold.threshold)
        metrics = binary_metrics(summary)
        params["threshold"] = json.dumps(
            cfg.binary_threshold.model_dump(mode="json"), sort_keys=True
        )
        decided = f"threshold {run.threshold.threshold:.4f} ({run.threshold.rule})"
    return await register_version(
        registry,
        cfg.model,
        directory,
        summary,
        run,
        output=output,
        metrics=metrics,
        signature=inputs.signature(train),
        feature_service=inputs.feature_service,
        feature_refs=[],
        params=params,
        tags={
            "training.config_sha256": digest,
            "training.data_file": data.path.name,
            "training.problem": "multiclass" if data.multiclass else "binary",
        },
        description=f"{cfg.estimator.name} on {len(train):,} rows of {data.path.name}; {decided}",
        source=(
            f"data file {data.path.name} (sha256 {data.sha256}, {data.rows:,} rows{span})"
            + (f" via feature service {inputs.feature_service}" if inputs.feature_service else "")
            + f"; config sha256 {digest}"
        ),
        input_example=input_example(run.split.validation),
    )
