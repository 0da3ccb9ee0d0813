"""``mlbackend train --config FILE``: a binary classifier for any tabular data file.

The same steps as the fraud flow (:mod:`pipeline`, :mod:`train_flow`), fed from a CSV
or Parquet file (read with pyarrow) instead of the synthetic generator:

1. read the configured columns and check them (present, label with exactly two
   classes, numeric features numeric, no empty file) — :class:`DataError` otherwise;
2. the feature matrix: numeric columns as they are, categorical columns as integer
   codes of their sorted values (the version's ``params["categories"]`` lists them;
   serving takes numbers only) — or, with ``feature_service``, a point-in-time read of
   the feature store at each row's timestamp for its entity key;
3. evaluate the current ``production`` version on this run's test rows (its own
   inputs: its own category codes, or its own feature service);
4. split / train (one-hot encoding of the codes in the pipeline) / threshold for the
   precision or recall target / evaluate next to the majority class / gate, and write
   the run directory;
5. register with signature, threshold, baseline statistics, lineage (data file sha256,
   rows, time range, config digest) and attachments; promote or record why not.

Binary classification only: the positive class becomes 1 and the threshold applies
to its probability, which is what serving's decision threshold means.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
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
from mlbackend_training.config import TabularConfig
from mlbackend_training.fraud_features import FeatureMatrix
from mlbackend_training.fraud_store import historical_values
from mlbackend_training.pipeline import (
    Champion,
    ModelRun,
    StepClock,
    Steps,
    evaluate,
    fit_evaluate_gate,
    split_dataset,
    threshold_for_recall,
    train_model,
)
from mlbackend_training.report import render_card
from mlbackend_training.run_local import make_run_dir, new_run_id, write_artifacts
from mlbackend_training.train_flow import (
    ChampionEvaluation,
    evaluate_champion,
    gate_with,
    input_example,
    publish,
    record_registration,
    register_version,
)

UNKNOWN_CODE = -1.0
"""A category a version's codes do not know (one-hot encodes as all zeros)."""
_STEPS = ("read", "features", "split", "train", "threshold", "evaluate", "gate")


class DataError(ValueError):
    """The data file does not fit the configuration; the message says what and where."""


@dataclass(frozen=True)
class TabularData:
    """The configured columns of the data file, checked."""

    path: Path
    sha256: str
    rows: int
    label: NDArray[np.int8]  # 1 = the positive class
    classes: tuple[str, str]  # (negative, positive) as written in the file
    timestamp: NDArray[np.int64]  # seconds; zeros without a timestamp column
    entity: NDArray[np.str_]
    numeric: dict[str, NDArray[np.float64]]
    categorical: dict[str, list[str | None]]

    @property
    def positive_rate(self) -> float:
        return float(self.label.mean())


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


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _label(
    column: pa.ChunkedArray, config: TabularConfig
) -> tuple[NDArray[np.int8], tuple[str, str]]:
    name = config.label.column
    if column.null_count:
        raise DataError(f"label: column {name!r} has {column.null_count} empty value(s)")
    values = [_text(v) for v in column.to_pylist()]
    distinct = sorted(set(values))
    if len(distinct) != 2:
        shown = distinct[:10]
        raise DataError(
            f"label: column {name!r} has {len(distinct)} distinct value(s) {shown}; binary "
            "classification needs exactly 2"
        )
    if config.label.positive is not None:
        positive = _text(config.label.positive)
        if positive not in distinct:
            raise DataError(f"label.positive: {positive!r} is not a value of {name!r} {distinct}")
    elif set(distinct) in ({"0", "1"}, {"false", "true"}):
        positive = distinct[1]
    else:
        raise DataError(f"label.positive: say which of {distinct} is the positive class")
    negative = next(v for v in distinct if v != positive)
    label = np.fromiter((v == positive for v in values), dtype=np.int8, count=len(values))
    return label, (negative, positive)


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
            categorical[name] = [None if v is None else _text(v) for v in table[name].to_pylist()]
    timestamp = (
        _seconds(table[config.timestamp], config.timestamp)
        if config.timestamp
        else np.zeros(table.num_rows, dtype=np.int64)
    )
    return TabularData(
        path=config.data.path,
        sha256=_file_sha256(config.data.path),
        rows=table.num_rows,
        label=label,
        classes=classes,
        timestamp=timestamp,
        entity=np.asarray([_text(v) for v in entity.to_pylist()], dtype=np.str_),
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
    return FeatureMatrix(names, values, data.label, data.timestamp, data.entity, rows)


def _event_time(seconds: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromSeconds(int(seconds))
    return out


async def from_feature_service(
    client: FeatureStoreClient, service: str, entity_key: str, data: TabularData
) -> FeatureMatrix:
    """The feature service's values for each row's entity as of the row's timestamp."""
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
    return _matrix(data, read.names, read.values)


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class TabularRun(ModelRun):
    config: TabularConfig
    data: TabularData
    features: FeatureMatrix
    categories: dict[str, list[str]]

    def summary(self) -> dict[str, Any]:
        data = self.data
        return {
            "seed": self.config.split.seed,
            "config": self.config.to_dict(),
            "data": {
                "file": data.path.name,
                "format": self.config.data.resolved_format(),
                "sha256": data.sha256,
                "rows": data.rows,
                "positive_rate": data.positive_rate,
                "classes": {"0": data.classes[0], "1": data.classes[1]},
                "from_ts": int(data.timestamp.min()),
                "to_ts": int(data.timestamp.max()),
                "config_sha256": self.config.digest(),
            },
            **self.evaluation_summary(),
            "categories": self.categories,
        }


@dataclass(frozen=True)
class TabularResult:
    run_id: str
    directory: Path
    run: TabularRun
    summary: dict[str, Any]
    version: int
    promoted: bool
    decision: str
    champion_version: int | None


def _steps(config: TabularConfig, features: FeatureMatrix, problem: str | None) -> Steps:
    categorical = [
        n in (config.features.categorical if config.features else ()) for n in features.names
    ]
    target = config.threshold
    steps = Steps(
        train=partial(train_model, categorical=categorical),
        evaluate=partial(evaluate, baselines={}),  # majority only: no rule scorer here
        gate=gate_with(problem),
    )
    if target.recall is not None:
        recall = target.recall
        return Steps(
            train=steps.train,
            evaluate=steps.evaluate,
            gate=steps.gate,
            threshold=lambda label, score, precision: threshold_for_recall(
                label, score, recall, precision
            ),
        )
    return steps


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _card(run: TabularRun, run_id: str, sha256: str) -> str:
    cfg, data = run.config, run.data
    source = (
        f"feature service `{cfg.feature_service}`, point-in-time at each row's timestamp"
        if cfg.feature_service
        else f"column of `{data.path.name}`"
    )
    rows: list[tuple[str, str]] = []
    for name in run.features.names:
        if name in run.categories:
            codes = ", ".join(f"{i}={v}" for i, v in enumerate(run.categories[name]))
            rows.append((name, f"{source}, categorical as codes ({codes}; other = -1)"))
        else:
            rows.append((name, f"{source}, numeric"))
    target = cfg.threshold
    return render_card(
        title=f"Model card: {cfg.model} — run `{run_id}`",
        run=run,
        estimator=cfg.estimator.spec(),
        data_lines=[
            f"- data file `{data.path.name}` ({cfg.data.resolved_format()}), sha256 "
            f"`{data.sha256}`: {data.rows:,} rows, {_iso(int(data.timestamp.min()))} → "
            f"{_iso(int(data.timestamp.max()))} UTC",
            f"- label `{cfg.label.column}`: positive class `{data.classes[1]}` (= 1), negative "
            f"`{data.classes[0]}` (= 0); positive rate {data.positive_rate:.4f}",
            f"- entity key `{cfg.entity_key}`; configuration sha256 `{cfg.digest()}`",
            f"- threshold target: {'precision' if target.precision else 'recall'} ≥ "
            f"{target.precision or target.recall:g}",
        ],
        feature_rows=rows,
        feature_note="Categorical inputs are sent as the integer codes listed (serving takes "
        "numbers); the pipeline one-hot encodes them, unknown codes as all zeros.",
        scorers_note="Same rows for both scorers. Baseline: the majority class only (the rule "
        "scorer belongs to the fraud case study). Decisions: model at the threshold chosen on "
        "validation; majority always its class.",
        rows_noun="rows",
        positive_noun="positive",
        extra={"artifact sha256": f"`{sha256}`"},
    )


def run_tabular(
    config: TabularConfig,
    data: TabularData,
    features: FeatureMatrix,
    categories: dict[str, list[str]],
    data_dir: Path,
    *,
    champion: Champion | None = None,
    problem: str | None = None,
    progress: bool = False,
) -> tuple[str, Path, TabularRun, dict[str, Any]]:
    """Train, evaluate, gate and write the run directory; no services."""
    run_id = new_run_id({**config.to_dict(), "data_sha256": data.sha256})
    directory = make_run_dir(data_dir, run_id)
    with tqdm(total=len(_STEPS) - 1, desc=f"train {config.model}", unit="step",
              disable=not progress, file=sys.stderr) as bar:  # fmt: skip

        def tick(_name: str) -> None:
            bar.update()

        clock = StepClock(tick)
        core = fit_evaluate_gate(
            features,
            split=config.split.split_config(),
            estimator=config.estimator.spec(),
            seed=config.split.seed,
            precision_target=config.threshold.precision_target,
            gate=config.gate.gate_config(),
            dataset_digest=data.sha256,
            steps=_steps(config, features, problem),
            champion=champion,
            clock=clock,
        )
    run = TabularRun(**core.core(), config=config, data=data, features=features,
                     categories=categories)  # fmt: skip
    signature = [
        {"name": n, "dtype": "int64" if n in categories else "float64"} for n in features.names
    ]
    summary = write_artifacts(
        directory,
        run,
        lambda sha256: _card(run, run_id, sha256),
        {
            **run.summary(),
            "signature": {
                "inputs": signature,
                "output": {"kind": "classifier", "classes": [0, 1]},
            },
        },
        classes=data.classes,
    )
    return run_id, directory, run, summary


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
    say(f"read {data.rows:,} rows of {data.path.name} (positive rate {data.positive_rate:.4f})")
    if config.feature_service is not None:
        if features is None:
            raise ValueError("feature_service needs a feature store address")
        service = config.feature_service
        matrix = await from_feature_service(features, service, config.entity_key, data)
        categories: dict[str, list[str]] = {}
        say(f"feature store: point-in-time training set of {len(matrix):,} rows from {service}")
    else:
        assert config.features is not None
        categories = vocabulary(data)
        matrix = encode(data, config.features.names, categories)

    test = split_dataset(matrix, config.split.split_config(), config.split.seed).test

    async def champion_inputs(champion: r.ModelVersion) -> FeatureMatrix:
        names = [s.name for s in champion.signature.features]
        if champion.feature_service:
            if features is None:
                raise ValueError(f"it reads feature service {champion.feature_service}")
            full = await from_feature_service(
                features, champion.feature_service, config.entity_key, data
            )
        else:
            codes = json.loads(champion.params.get("categories", "{}"))
            full = encode(data, names, codes)
        return full.take(np.asarray([int(i) for i in test.transaction_id], dtype=np.intp))

    champ: ChampionEvaluation = await evaluate_champion(
        registry,
        config.model,
        test,
        champion_inputs,
        precision_target=config.threshold.precision_target,
        recall_target=config.threshold.recall,
    )
    if champ.version is not None:
        say(f"champion {config.model}@{champ.version} evaluated on the same test rows"
            + (f": {champ.problem}" if champ.problem else ""))  # fmt: skip
    run_id, directory, run, summary = await asyncio.to_thread(
        run_tabular, config, data, matrix, categories, data_dir,
        champion=champ.champion, problem=champ.problem, progress=progress,
    )  # fmt: skip
    version = await _register(registry, directory, summary, run, matrix)
    promoted, decision = await publish(
        registry, config.model, version.version, directory, run.gate, promote
    )
    record_registration(directory, summary, {
        "model": config.model, "version": version.version, "promoted": promoted,
        "decision": decision, "champion_version": champ.version,
    })  # fmt: skip
    return TabularResult(run_id, directory, run, summary, version.version, promoted, decision,
                         champ.version)  # fmt: skip


async def _register(
    registry: RegistryClient,
    directory: Path,
    summary: dict[str, Any],
    run: TabularRun,
    matrix: FeatureMatrix,
) -> r.ModelVersion:
    cfg, data, train = run.config, run.data, run.split.train
    nullable = {n for n in train.names if np.isnan(train.column(n)).any()}
    signature = [
        c.FeatureSpec(name=n, dtype=c.DATA_TYPE_INT64, nullable=True)
        if n in run.categories
        else c.FeatureSpec(name=n, dtype=c.DATA_TYPE_DOUBLE, nullable=n in nullable)
        for n in matrix.names
    ]
    digest = cfg.digest()
    span = f"{_iso(int(data.timestamp.min()))} → {_iso(int(data.timestamp.max()))} UTC"
    target = cfg.threshold
    return await register_version(
        registry,
        cfg.model,
        directory,
        summary,
        run,
        signature=signature,
        feature_service=cfg.feature_service or "",
        feature_refs=[],
        params={
            "estimator": cfg.estimator.name,
            "estimator_params": json.dumps(cfg.estimator.params, sort_keys=True),
            "seed": str(cfg.split.seed),
            "split": json.dumps(cfg.split.model_dump(mode="json"), sort_keys=True),
            "threshold": json.dumps(target.model_dump(mode="json"), sort_keys=True),
            "gate": json.dumps(cfg.gate.model_dump(mode="json"), sort_keys=True),
            "label": json.dumps(
                {"column": cfg.label.column, "0": data.classes[0], "1": data.classes[1]}
            ),
            "categories": json.dumps(run.categories, sort_keys=True),
            "config_sha256": digest,
        },
        tags={
            "training.config_sha256": digest,
            "training.data_file": data.path.name,
        },
        description=(
            f"{cfg.estimator.name} on {len(train):,} rows of {data.path.name}; "
            f"threshold {run.threshold.threshold:.4f} ({run.threshold.rule})"
        ),
        source=(
            f"data file {data.path.name} (sha256 {data.sha256}, {data.rows:,} rows, {span})"
            + (f" via feature service {cfg.feature_service}" if cfg.feature_service else "")
            + f"; config sha256 {digest}"
        ),
        input_example=input_example(run.split.validation),
    )
