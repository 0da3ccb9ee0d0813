"""Per-user fraud features as of each transaction's time, without leakage.

**The rule.** A transaction at time ``t`` sees only the same user's events with a
timestamp *strictly before* ``t``: not itself, not later events, and not other events
in the same second (a burst's simultaneous payments do not see each other, so two
rows with the same user and second always get identical history features). The
current transaction enters only through *request-time* inputs a caller has when it
asks for a score: its amount, time, region and merchant category.

Features come in three layers, mirroring how the feature store will serve them:

1. stored history aggregates of view ``user_transactions`` (one row per transaction,
   stamped at the transaction's timestamp, holding the state *before* it, so a
   point-in-time read at that timestamp returns exactly the training values):
   counts and amount sums over ``[t - w, t)`` for 1 h / 24 h / 7 d, the number of
   earlier transactions, mean and std of their ``log1p(amount)``, the previous
   transaction's time;
2. stored profiles: view ``user_profile`` (age, sign-up time, home region, stamped at
   sign-up) and view ``merchant_profile`` (category and its prior risk);
3. on-demand transforms of (1), (2) and the request inputs (:func:`apply_transforms`):
   amount z-score, seconds since the previous transaction, hour of day, far-from-home
   flag, account age in days, category risk.

Missing history (a user's first transactions) is ``NaN``; HistGradientBoosting
handles it natively, other estimators get an imputer in their pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlbackend_training.fraud_data import (
    CATEGORY_NAMES,
    CATEGORY_RISK,
    DAY,
    FAR_FROM_HOME_KM,
    HOUR,
    REGION_DISTANCE_KM,
    REGION_NAMES,
    FraudDataset,
)

WINDOWS: dict[str, int] = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY}
# Below this the user's amount history is too short for a z-score.
MIN_HISTORY_FOR_ZSCORE = 3
# Floor of the history's std, so a user who always pays the same gets no infinite z.
MIN_LOG_STD = 0.25

HISTORY_VIEW = "user_transactions"
PROFILE_VIEW = "user_profile"
MERCHANT_VIEW = "merchant_profile"

HISTORY_FEATURES: tuple[str, ...] = (
    *(f"txn_count_{w}" for w in WINDOWS),
    *(f"amount_sum_{w}" for w in WINDOWS),
    "history_count",
    "amount_log_mean",
    "amount_log_std",
    "last_txn_ts",
)
PROFILE_FEATURES: tuple[str, ...] = ("age", "signup_ts", "home_region")
MERCHANT_FEATURES: tuple[str, ...] = ("category", "category_risk")

# Model inputs, in signature order.
FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "amount_log_zscore",
    "txn_count_1h",
    "txn_count_24h",
    "txn_count_7d",
    "amount_sum_1h",
    "amount_sum_24h",
    "amount_sum_7d",
    "history_count",
    "seconds_since_prev",
    "hour_of_day",
    "far_from_home",
    "account_age_days",
    "user_age",
    "category_risk",
)

# Where each model input comes from: ``view:feature`` for stored values, ``request:``
# for request-time inputs, ``transform:`` for on-demand transforms (their inputs listed).
FEATURE_REFS: dict[str, str] = {
    "amount": "request:amount",
    "amount_log_zscore": (
        f"transform:amount_log_zscore(request:amount, {HISTORY_VIEW}:amount_log_mean, "
        f"{HISTORY_VIEW}:amount_log_std, {HISTORY_VIEW}:history_count)"
    ),
    **{f"txn_count_{w}": f"{HISTORY_VIEW}:txn_count_{w}" for w in WINDOWS},
    **{f"amount_sum_{w}": f"{HISTORY_VIEW}:amount_sum_{w}" for w in WINDOWS},
    "history_count": f"{HISTORY_VIEW}:history_count",
    "seconds_since_prev": (
        f"transform:seconds_since_prev(request:timestamp, {HISTORY_VIEW}:last_txn_ts)"
    ),
    "hour_of_day": "transform:hour_of_day(request:timestamp)",
    "far_from_home": f"transform:far_from_home(request:region, {PROFILE_VIEW}:home_region)",
    "account_age_days": f"transform:account_age_days(request:timestamp, {PROFILE_VIEW}:signup_ts)",
    "user_age": f"{PROFILE_VIEW}:age",
    "category_risk": f"{MERCHANT_VIEW}:category_risk",
}

# The stored refs a model version consumes (what it will ask the feature store for).
STORED_FEATURE_REFS: tuple[str, ...] = (
    *(f"{HISTORY_VIEW}:{f}" for f in HISTORY_FEATURES),
    *(f"{PROFILE_VIEW}:{f}" for f in PROFILE_FEATURES),
    *(f"{MERCHANT_VIEW}:{f}" for f in MERCHANT_FEATURES),
)

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class FeatureMatrix:
    """Model inputs, one row per transaction, in the transactions' order."""

    names: tuple[str, ...]
    values: FloatArray  # shape (rows, len(names)), NaN = missing
    label: NDArray[np.int8]
    timestamp: NDArray[np.int64]
    entity: NDArray[np.str_]  # user_id
    transaction_id: NDArray[np.str_]

    def __len__(self) -> int:
        return len(self.label)

    def column(self, name: str) -> FloatArray:
        return np.asarray(self.values[:, self.names.index(name)], dtype=np.float64)

    def take(self, rows: NDArray[np.intp]) -> FeatureMatrix:
        return FeatureMatrix(
            self.names,
            self.values[rows],
            self.label[rows],
            self.timestamp[rows],
            self.entity[rows],
            self.transaction_id[rows],
        )


@dataclass(frozen=True)
class FeatureRow:
    """One feature-store row: a view's values for an entity as of a timestamp."""

    view: str
    entity_key: dict[str, str]
    event_timestamp: int
    values: dict[str, float | int | str | None]


def history_aggregates(
    user: NDArray[np.int64], timestamp: NDArray[np.int64], amount: FloatArray
) -> dict[str, FloatArray]:
    """Each event's per-user history aggregates over strictly earlier events.

    Vectorised: events are sorted by (user, time) and every window bound is a
    ``searchsorted`` on a combined key; sums come from prefix sums. The result is in
    the input order.
    """
    n = len(user)
    if n == 0:
        return {name: np.empty(0) for name in HISTORY_FEATURES}
    order = np.lexsort((timestamp, user))
    u = user[order].astype(np.int64)
    t = timestamp[order].astype(np.int64)
    a = amount[order].astype(np.float64)
    t0 = int(t.min())
    # one user's keys never reach into another's, even shifted by the longest window
    stride = int(t.max()) - t0 + max(WINDOWS.values()) + 1
    key = u * stride + (t - t0)
    first_of_user = np.searchsorted(key, u * stride, side="left")
    # index of the first event in the same (user, second): everything before is history
    now = np.searchsorted(key, key, side="left")

    def prefix(x: FloatArray) -> FloatArray:
        return np.concatenate([[0.0], np.cumsum(x)])

    cs_amount = prefix(a)
    out: dict[str, FloatArray] = {}
    for w_name, width in WINDOWS.items():
        lo = np.searchsorted(key, key - width, side="left")
        out[f"txn_count_{w_name}"] = (now - lo).astype(np.float64)
        out[f"amount_sum_{w_name}"] = cs_amount[now] - cs_amount[lo]
    hist = (now - first_of_user).astype(np.float64)
    log_a = np.log1p(a)
    cs1, cs2 = prefix(log_a), prefix(log_a * log_a)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (cs1[now] - cs1[first_of_user]) / hist
        var = (cs2[now] - cs2[first_of_user]) / hist - mean * mean
    out["history_count"] = hist
    out["amount_log_mean"] = np.where(hist > 0, mean, np.nan)
    out["amount_log_std"] = np.where(hist > 0, np.sqrt(np.maximum(var, 0.0)), np.nan)
    has_prev = now > first_of_user
    prev_ts = t[np.maximum(now - 1, 0)].astype(np.float64)
    out["last_txn_ts"] = np.where(has_prev, prev_ts, np.nan)
    result: dict[str, FloatArray] = {}
    for name in HISTORY_FEATURES:
        col = np.empty(n, dtype=np.float64)
        col[order] = out[name]
        result[name] = col
    return result


def apply_transforms(
    stored: Mapping[str, NDArray[Any]], request: Mapping[str, NDArray[Any]]
) -> dict[str, FloatArray]:
    """Model inputs from stored values and request-time inputs (on-demand transforms).

    ``stored`` holds the history aggregates plus ``age``, ``signup_ts``,
    ``home_region`` and ``category_risk``; ``request`` holds ``amount``,
    ``timestamp`` and ``region``. The same function serves a batch or a single row.
    """
    amount = np.asarray(request["amount"], dtype=np.float64)
    ts = np.asarray(request["timestamp"], dtype=np.int64)
    hist = np.asarray(stored["history_count"], dtype=np.float64)
    log_mean = np.asarray(stored["amount_log_mean"], dtype=np.float64)
    log_std = np.asarray(stored["amount_log_std"], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        z = (np.log1p(amount) - log_mean) / np.maximum(log_std, MIN_LOG_STD)
    region_idx = _index_of(np.asarray(request["region"]), REGION_NAMES)
    home_idx = _index_of(np.asarray(stored["home_region"]), REGION_NAMES)
    features: dict[str, FloatArray] = {
        "amount": amount,
        "amount_log_zscore": np.where(hist >= MIN_HISTORY_FOR_ZSCORE, z, np.nan),
        **{f"txn_count_{w}": _f64(stored[f"txn_count_{w}"]) for w in WINDOWS},
        **{f"amount_sum_{w}": _f64(stored[f"amount_sum_{w}"]) for w in WINDOWS},
        "history_count": hist,
        "seconds_since_prev": ts - _f64(stored["last_txn_ts"]),
        "hour_of_day": ((ts % DAY) // HOUR).astype(np.float64),
        "far_from_home": (REGION_DISTANCE_KM[region_idx, home_idx] > FAR_FROM_HOME_KM).astype(
            np.float64
        ),
        "account_age_days": (ts - _f64(stored["signup_ts"])) / DAY,
        "user_age": _f64(stored["age"]),
        "category_risk": _f64(stored["category_risk"]),
    }
    return features


def build_features(dataset: FraudDataset) -> FeatureMatrix:
    """The model's feature matrix for every transaction of ``dataset``."""
    tx, users = dataset.transactions, dataset.users
    stored: dict[str, NDArray[Any]] = dict(
        history_aggregates(tx.user_index, tx.timestamp, tx.amount)
    )
    stored["age"] = users.age[tx.user_index]
    stored["signup_ts"] = users.signup_ts[tx.user_index]
    stored["home_region"] = users.home_region[tx.user_index]
    risk = np.array([CATEGORY_RISK[c] for c in CATEGORY_NAMES])
    stored["category_risk"] = risk[_index_of(tx.category, CATEGORY_NAMES)]
    request = {"amount": tx.amount, "timestamp": tx.timestamp, "region": tx.region}
    features = apply_transforms(stored, request)
    values = np.column_stack([features[name] for name in FEATURE_NAMES])
    return FeatureMatrix(
        FEATURE_NAMES, values, tx.is_fraud, tx.timestamp, tx.user_id, tx.transaction_id
    )


def feature_store_rows(dataset: FraudDataset) -> list[FeatureRow]:
    """Rows for the feature store: history per transaction, profiles, merchants.

    History rows carry the state *before* their transaction at its timestamp, so a
    point-in-time read at a transaction's time returns what the model trained on.
    Users' profile rows are stamped at sign-up; merchant rows at the data's start.
    """
    tx, users = dataset.transactions, dataset.users
    agg = history_aggregates(tx.user_index, tx.timestamp, tx.amount)
    rows: list[FeatureRow] = []
    names = list(HISTORY_FEATURES)
    columns = [agg[name].tolist() for name in names]
    for i, (uid, ts) in enumerate(zip(tx.user_id.tolist(), tx.timestamp.tolist(), strict=True)):
        values: dict[str, float | int | str | None] = {}
        for name, col in zip(names, columns, strict=True):
            v = col[i]
            values[name] = None if v != v else v  # NaN (no history) is a null
        rows.append(FeatureRow(HISTORY_VIEW, {"user_id": uid}, int(ts), values))
    for uid, age, signup, home in zip(
        users.user_id.tolist(),
        users.age.tolist(),
        users.signup_ts.tolist(),
        users.home_region.tolist(),
        strict=True,
    ):
        profile: dict[str, float | int | str | None] = {
            "age": age,
            "signup_ts": signup,
            "home_region": home,
        }
        rows.append(FeatureRow(PROFILE_VIEW, {"user_id": uid}, int(signup), profile))
    for mid, category in sorted(dataset.merchant_category.items()):
        merchant: dict[str, float | int | str | None] = {
            "category": category,
            "category_risk": CATEGORY_RISK[category],
        }
        rows.append(FeatureRow(MERCHANT_VIEW, {"merchant_id": mid}, dataset.config.start, merchant))
    return rows


def _index_of(values: NDArray[Any], vocabulary: tuple[str, ...]) -> NDArray[np.intp]:
    lookup = {name: i for i, name in enumerate(vocabulary)}
    try:
        return np.array([lookup[str(v)] for v in values.tolist()], dtype=np.intp)
    except KeyError as exc:
        raise ValueError(f"unknown value {exc.args[0]!r}, expected one of {vocabulary}") from exc


def _f64(values: NDArray[Any]) -> FloatArray:
    return np.asarray(values, dtype=np.float64)
