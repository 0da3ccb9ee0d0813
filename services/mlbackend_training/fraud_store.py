"""The fraud features in the feature store: definitions, rows, point-in-time training set.

This module is the feature source that talks to the feature store (the only module
of the package besides :mod:`mlbackend_training.train_flow` that calls a service).
It replaces :func:`mlbackend_training.fraud_features.build_features` as the
``featurize`` step: the generated events' per-user state is written into the store,
and the training set is read back with ``GetHistoricalFeatures`` at each
transaction's own time, through the feature service the model will be served with —
so training and serving read the same transforms from the same code.

**How each model input is produced** (the store's transform set has no sum of two
columns, so ``1 + amount`` is a ``MinMaxScale`` over ``[-1, 0]`` and ``x - 1`` one over
``[1, 2]``):

==================== =================================================================
``amount``           request input
``amount_log_zscore`` ``log((1 + amount) / exp(mean)) / max(std, 0.25)``: ``Log1p`` of
                     ``Ratio(1 + amount, amount_typical) - 1``, then ``Ratio`` by the
                     stored floored std; both stored values are null below 3 earlier
                     transactions, so the z-score is null there, as in training
counts, sums         stored (``user_transactions``), renamed by ``Clip(min=0)``
``seconds_since_prev`` ``Difference(EpochSeconds(event_time), last_txn_ts)``
``hour_of_day``      ``HourOfDay(event_time)`` (UTC)
``far_from_home``    **request input**: the region-to-home distance table is not a
                     store transform (no lookup of a pair); the payment processor knows
                     the cardholder's home and sends the 0/1 flag
``account_age_days`` ``Difference(EpochSeconds(event_time), signup_ts) / 86400``
``user_age``         stored (``user_profile``)
``category_risk``    stored (``merchant_profile``, keyed by ``merchant_id``)
==================== =================================================================

So a caller sends the transaction's amount, its time (``event_time``, a TIMESTAMP)
and the far-from-home flag; the store derives everything else.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import struct_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_training.fraud_data import (
    CATEGORY_RISK,
    DAY,
    FAR_FROM_HOME_KM,
    REGION_DISTANCE_KM,
    REGION_NAMES,
    FraudDataset,
)
from mlbackend_training.fraud_features import (
    FEATURE_NAMES,
    HISTORY_VIEW,
    MERCHANT_VIEW,
    MIN_HISTORY_FOR_ZSCORE,
    MIN_LOG_STD,
    PROFILE_VIEW,
    WINDOWS,
    FeatureMatrix,
    history_aggregates,
)

FEATURE_SERVICE = "fraud_features"
WRITE_BATCH_ROWS = 5_000
HISTORICAL_CHUNK_ROWS = 10_000
# Rows per GetHistoricalFeatures call: bounds the request message and the server's work.
HISTORICAL_CALL_ROWS = 20_000

HISTORY_STORED: tuple[str, ...] = (
    *(f"txn_count_{w}" for w in WINDOWS),
    *(f"amount_sum_{w}" for w in WINDOWS),
    "history_count",
    "amount_log_mean",
    "amount_log_std",
    "amount_typical",
    "amount_log_std_floor",
    "last_txn_ts",
)
PROFILE_STORED: tuple[str, ...] = ("age", "signup_ts", "home_region")
MERCHANT_STORED: tuple[str, ...] = ("category", "category_risk")
_STRINGS = {"home_region", "category"}

# Request-time inputs of the feature service, with the values they may take (NaN and
# infinities are refused by default): a read with a negative amount or a flag other
# than 0/1 is refused, naming the input.
REQUEST_INPUTS: tuple[f.RequestInput, ...] = (
    f.RequestInput(
        name="amount", dtype=c.DATA_TYPE_DOUBLE, constraints=f.FeatureConstraints(min=0)
    ),
    f.RequestInput(name="event_time", dtype=c.DATA_TYPE_TIMESTAMP),
    f.RequestInput(
        name="far_from_home",
        dtype=c.DATA_TYPE_DOUBLE,
        constraints=f.FeatureConstraints(
            allowed_values=[c.Value(double_value=0), c.Value(double_value=1)]
        ),
    ),
)

# Model inputs that are the store's stored values under a plain name (Clip at 0).
_RENAMED: dict[str, str] = {
    **{f"txn_count_{w}": f"{HISTORY_VIEW}:txn_count_{w}" for w in WINDOWS},
    **{f"amount_sum_{w}": f"{HISTORY_VIEW}:amount_sum_{w}" for w in WINDOWS},
    "history_count": f"{HISTORY_VIEW}:history_count",
    "user_age": f"{PROFILE_VIEW}:age",
    "category_risk": f"{MERCHANT_VIEW}:category_risk",
}


def _double(name: str) -> f.Feature:
    return f.Feature(
        name=name, dtype=c.DATA_TYPE_STRING if name in _STRINGS else c.DATA_TYPE_DOUBLE
    )


def _minus_one(output: str, source: str) -> f.Transform:
    return f.Transform(
        output=output, min_max_scale=f.Transform.MinMaxScale(input=source, min=1, max=2)
    )


def _ratio(output: str, numerator: str, denominator: str) -> f.Transform:
    return f.Transform(
        output=output, ratio=f.Transform.Ratio(numerator=numerator, denominator=denominator)
    )


def _elapsed(output: str, since: str) -> f.Transform:
    """Seconds from ``since`` (stored unix seconds) to the transaction's time."""
    return f.Transform(
        output=output, difference=f.Transform.Difference(left="event_time_s", right=since)
    )


def feature_service() -> f.FeatureService:
    """The feature service whose outputs are the model's inputs, in signature order."""
    refs = [
        *(f"{HISTORY_VIEW}:{n}" for n in ("amount_typical", "amount_log_std_floor", "last_txn_ts")),
        *_RENAMED.values(),
        f"{PROFILE_VIEW}:signup_ts",
    ]
    transforms = [
        f.Transform(output="hour_of_day", hour_of_day=f.Transform.HourOfDay(input="event_time")),
        f.Transform(
            output="event_time_s", epoch_seconds=f.Transform.EpochSeconds(input="event_time")
        ),
        # 1 + amount as a min-max scale over [-1, 0]
        f.Transform(
            output="amount_plus_one",
            min_max_scale=f.Transform.MinMaxScale(input="amount", min=-1, max=0),
        ),
        _ratio("amount_to_typical", "amount_plus_one", f"{HISTORY_VIEW}:amount_typical"),
        _minus_one("amount_to_typical_excess", "amount_to_typical"),
        f.Transform(
            output="amount_log_excess", log1p=f.Transform.Log1p(input="amount_to_typical_excess")
        ),
        _ratio("amount_log_zscore", "amount_log_excess", f"{HISTORY_VIEW}:amount_log_std_floor"),
        _elapsed("seconds_since_prev", f"{HISTORY_VIEW}:last_txn_ts"),
        _elapsed("account_age_s", f"{PROFILE_VIEW}:signup_ts"),
        f.Transform(
            output="account_age_days",
            standard_scale=f.Transform.StandardScale(input="account_age_s", mean=0, std=DAY),
        ),
        *(
            f.Transform(output=name, clip=f.Transform.Clip(input=ref, min=0))
            for name, ref in _RENAMED.items()
        ),
    ]
    return f.FeatureService(
        name=FEATURE_SERVICE,
        feature_refs=refs,
        request_inputs=REQUEST_INPUTS,
        transforms=transforms,
        outputs=list(FEATURE_NAMES),
        description="Inputs of the fraud_detection model (fraud case study).",
        owner="mlbackend-training",
    )


def definitions() -> f.ApplyDefinitionsRequest:
    """Entities user and merchant, the three views and the feature service."""
    return f.ApplyDefinitionsRequest(
        entities=[
            f.Entity(name="user", join_keys=[f.JoinKey(name="user_id", dtype=c.DATA_TYPE_STRING)]),
            f.Entity(
                name="merchant",
                join_keys=[f.JoinKey(name="merchant_id", dtype=c.DATA_TYPE_STRING)],
            ),
        ],
        feature_views=[
            f.FeatureView(
                name=HISTORY_VIEW,
                entities=["user"],
                features=[_double(n) for n in HISTORY_STORED],
                description="A user's history strictly before each transaction, stamped at it.",
            ),
            f.FeatureView(
                name=PROFILE_VIEW,
                entities=["user"],
                features=[_double(n) for n in PROFILE_STORED],
                description="A user's profile, stamped at sign-up.",
            ),
            f.FeatureView(
                name=MERCHANT_VIEW,
                entities=["merchant"],
                features=[_double(n) for n in MERCHANT_STORED],
                description="A merchant's category and the category's prior risk.",
            ),
        ],
        feature_services=[feature_service()],
    )


# ---------------------------------------------------------------- rows


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def value_pb(v: Any) -> c.Value:
    """A stored value: NaN and None are null, strings stay strings, numbers are doubles."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return c.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(v, str):
        return c.Value(string_value=v)
    return c.Value(double_value=float(v))


def user_key(user_id: str, merchant_id: str | None = None) -> c.EntityKey:
    keys = {"user_id": c.Value(string_value=user_id)}
    if merchant_id is not None:
        keys["merchant_id"] = c.Value(string_value=merchant_id)
    return c.EntityKey(join_keys=keys)


def history_columns(dataset: FraudDataset) -> dict[str, np.ndarray[Any, Any]]:
    """Stored history values per transaction (state strictly before it), NaN = null."""
    tx = dataset.transactions
    agg = history_aggregates(tx.user_index, tx.timestamp, tx.amount)
    enough = agg["history_count"] >= MIN_HISTORY_FOR_ZSCORE
    agg["amount_typical"] = np.where(enough, np.exp(agg["amount_log_mean"]), np.nan)
    agg["amount_log_std_floor"] = np.where(
        enough, np.maximum(agg["amount_log_std"], MIN_LOG_STD), np.nan
    )
    return agg


@dataclass(frozen=True)
class ViewBatch:
    view: str
    features: tuple[str, ...]
    rows: list[f.FeatureRow]


def view_batches(dataset: FraudDataset, batch_rows: int = WRITE_BATCH_ROWS) -> Iterator[ViewBatch]:
    """The data set's rows for the three views, in batches (history in time order)."""
    tx, users = dataset.transactions, dataset.users
    history = history_columns(dataset)
    columns = [history[n].tolist() for n in HISTORY_STORED]
    rows: list[f.FeatureRow] = []
    for i, (uid, ts) in enumerate(zip(tx.user_id.tolist(), tx.timestamp.tolist(), strict=True)):
        rows.append(
            f.FeatureRow(
                entity_key=user_key(uid),
                event_time=_ts(ts),
                values=[value_pb(col[i]) for col in columns],
            )
        )
        if len(rows) == batch_rows:
            yield ViewBatch(HISTORY_VIEW, HISTORY_STORED, rows)
            rows = []
    if rows:
        yield ViewBatch(HISTORY_VIEW, HISTORY_STORED, rows)
    profiles = [
        f.FeatureRow(
            entity_key=user_key(uid),
            event_time=_ts(signup),
            values=[value_pb(float(age)), value_pb(float(signup)), value_pb(home)],
        )
        for uid, age, signup, home in zip(
            users.user_id.tolist(),
            users.age.tolist(),
            users.signup_ts.tolist(),
            users.home_region.tolist(),
            strict=True,
        )
    ]
    for start in range(0, len(profiles), batch_rows):
        yield ViewBatch(PROFILE_VIEW, PROFILE_STORED, profiles[start : start + batch_rows])
    start_ts = min(dataset.config.start, int(users.signup_ts.min()))
    merchants = [
        f.FeatureRow(
            entity_key=c.EntityKey(join_keys={"merchant_id": c.Value(string_value=mid)}),
            event_time=_ts(start_ts),
            values=[value_pb(category), value_pb(CATEGORY_RISK[category])],
        )
        for mid, category in sorted(dataset.merchant_category.items())
    ]
    yield ViewBatch(MERCHANT_VIEW, MERCHANT_STORED, merchants)


def far_from_home(dataset: FraudDataset) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The request-time flag each transaction carries (the processor knows the home)."""
    tx, users = dataset.transactions, dataset.users
    lookup = {name: i for i, name in enumerate(REGION_NAMES)}
    region = np.array([lookup[r] for r in tx.region.tolist()])
    home = np.array([lookup[r] for r in users.home_region[tx.user_index].tolist()])
    far = REGION_DISTANCE_KM[region, home] > FAR_FROM_HOME_KM
    return np.asarray(far, dtype=np.float64)


def request_features(amount: float, timestamp: float, far: float) -> dict[str, c.Value]:
    """One transaction's request-time inputs, as the gateway and the store take them."""
    return {
        "amount": c.Value(double_value=float(amount)),
        "event_time": c.Value(timestamp_value=_ts(timestamp)),
        "far_from_home": c.Value(double_value=float(far)),
    }


# ---------------------------------------------------------------- store calls


@dataclass(frozen=True)
class WriteReport:
    rows: dict[str, int]
    seconds: float


async def apply_definitions(client: FeatureStoreClient) -> str:
    """Apply the definitions; return the feature service's ``name@version``."""
    response = await client.stub.ApplyDefinitions(definitions(), timeout=30)
    change = next(ch for ch in response.changes if ch.kind == "feature_service")
    return f"{change.name}@{change.revision}"


async def write_dataset(
    client: FeatureStoreClient, dataset: FraudDataset, batch_prefix: str
) -> dict[str, int]:
    """Write every row; batch ids derive from the data's digest, so a re-run is a no-op."""
    written: dict[str, int] = {}
    for i, batch in enumerate(view_batches(dataset)):
        request = f.WriteFeaturesRequest(
            batch=f.FeatureBatch(
                batch_id=f"{batch_prefix}-{batch.view}-{i}",
                feature_view=batch.view,
                features=list(batch.features),
                rows=batch.rows,
            )
        )
        await client.stub.WriteFeatures(request, timeout=120)
        written[batch.view] = written.get(batch.view, 0) + len(batch.rows)
    return written


def _number(value: f.FeatureValue) -> float | None:
    """A returned value as a float: NaN for null, None for a string (not a model input)."""
    kind = value.value.WhichOneof("kind")
    if kind == "double_value":
        return float(value.value.double_value)
    if kind == "int64_value":
        return float(value.value.int64_value)
    if kind == "bool_value":
        return float(value.value.bool_value)
    if kind == "string_value":
        return None
    return math.nan


@dataclass(frozen=True)
class HistoricalValues:
    names: tuple[str, ...]
    values: np.ndarray[Any, np.dtype[np.float64]]  # NaN = null or a string
    strings: frozenset[str]  # features that returned strings
    schema: tuple[c.FeatureSpec, ...] = ()  # the read's output columns with their dtypes
    service: str = ""  # the feature service as resolved by the store, "name@version"


async def historical_values(
    client: FeatureStoreClient,
    service: str,
    count: int,
    entity_rows: Callable[[list[int]], list[f.EntityRow]],
) -> HistoricalValues:
    """Point-in-time values of ``service`` for ``count`` rows, asked in bounded calls;
    ``entity_rows`` builds the request rows of the given row positions.

    A service named without ``@version`` is resolved by the first call, and every later
    call asks for that version: a version applied mid-read cannot mix into the rows.
    """
    names: list[str] = []
    schema: list[c.FeatureSpec] = []
    strings: set[str] = set()
    values = np.empty((count, 0))
    for start in range(0, count, HISTORICAL_CALL_ROWS):
        part = list(range(start, min(start + HISTORICAL_CALL_ROWS, count)))
        request = f.GetHistoricalFeaturesRequest(
            feature_service=service,
            entity_rows=entity_rows(part),
            chunk_size=HISTORICAL_CHUNK_ROWS,
        )
        block: np.ndarray[Any, Any] | None = None
        async for chunk in client.stub.GetHistoricalFeatures(request, timeout=600):
            if chunk.schema:
                schema = list(chunk.schema)
                names = [s.name for s in schema]
                block = np.full((len(part), len(names)), np.nan)
            if chunk.feature_service:
                service = chunk.feature_service
            assert block is not None
            for offset, row in enumerate(chunk.rows):
                numbers = [_number(v) for v in row.values]
                strings.update(n for n, v in zip(names, numbers, strict=True) if v is None)
                block[chunk.start_row_index + offset] = [
                    math.nan if v is None else v for v in numbers
                ]
        assert block is not None
        values = block if start == 0 else np.vstack([values, block])
        await asyncio.sleep(0)
    return HistoricalValues(tuple(names), values, frozenset(strings), tuple(schema), service)


async def historical_matrix(
    client: FeatureStoreClient,
    service: str,
    dataset: FraudDataset,
    rows: Sequence[int] | None = None,
) -> FeatureMatrix:
    """Point-in-time read of ``service`` at each transaction's own time (all or ``rows``)."""
    tx = dataset.transactions
    index = np.arange(len(tx)) if rows is None else np.asarray(rows, dtype=np.intp)
    far = far_from_home(dataset)
    user_ids, merchant_ids = tx.user_id.tolist(), tx.merchant_id.tolist()
    amounts, times = tx.amount.tolist(), tx.timestamp.tolist()
    positions = index.tolist()

    def entity_rows(part: list[int]) -> list[f.EntityRow]:
        out = []
        for i in (positions[k] for k in part):
            out.append(
                f.EntityRow(
                    entity_key=user_key(user_ids[i], merchant_ids[i]),
                    event_time=_ts(times[i]),
                    request_inputs=c.FeatureMap(
                        values=request_features(amounts[i], times[i], float(far[i]))
                    ),
                )
            )
        return out

    read = await historical_values(client, service, len(index), entity_rows)
    return FeatureMatrix(
        read.names,
        read.values,
        tx.is_fraud[index],
        tx.timestamp[index],
        tx.user_id[index],
        tx.transaction_id[index],
    )
