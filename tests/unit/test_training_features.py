"""Per-user fraud features: a transaction never sees itself or anything later."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlbackend_training.fraud_data import (
    DAY,
    HOUR,
    FraudDataConfig,
    FraudDataset,
    Transactions,
    UserProfiles,
    generate,
)
from mlbackend_training.fraud_features import (
    FEATURE_NAMES,
    FEATURE_REFS,
    HISTORY_FEATURES,
    HISTORY_VIEW,
    FeatureMatrix,
    build_features,
    feature_store_rows,
    history_aggregates,
)

T0 = FraudDataConfig().start

# user 0's hand-made timeline (seconds after T0, amount); user 1 interleaves
TIMELINE: list[tuple[int, int, float]] = [
    (0, 0, 10.0),
    (0, 30 * 60, 20.0),
    (1, 40 * 60, 999.0),  # another user: never counted for user 0
    (0, 50 * 60, 30.0),
    (0, 50 * 60, 40.0),  # same second as the previous one
    (0, 2 * HOUR, 50.0),  # 1 h window [1:00, 2:00) holds nothing
    (0, 26 * HOUR, 60.0),  # 24 h window [2:00 day 0, 2:00 day 1) holds the 2:00 one
    (0, 9 * DAY, 70.0),  # 7 d window empty
]


def dataset(timeline: list[tuple[int, int, float]]) -> FraudDataset:
    n = len(timeline)
    user = np.array([u for u, _, _ in timeline], dtype=np.int64)
    ts = T0 + np.array([t for _, t, _ in timeline], dtype=np.int64)
    order = np.argsort(ts, kind="stable")
    uid = np.array(["u0", "u1"])
    tx = Transactions(
        transaction_id=np.array([f"t{i}" for i in range(n)]),
        user_id=uid[user],
        user_index=user,
        merchant_id=np.array(["m0"] * n),
        category=np.array(["grocery"] * n),
        amount=np.array([a for _, _, a in timeline]),
        timestamp=ts,
        region=np.array(["us-east"] * (n - 1) + ["sg"]),
        is_fraud=np.zeros(n, dtype=np.int8),
        scenario=np.array(["ordinary"] * n),
    ).take(order)
    users = UserProfiles(
        user_id=uid,
        age=np.array([30, 22], dtype=np.int64),
        signup_ts=np.array([T0 - 10 * DAY, T0 - DAY], dtype=np.int64),
        home_region=np.array(["us-east", "uk"]),
    )
    return FraudDataset(FraudDataConfig(), users, tx, {"m0": "grocery"})


def user0(matrix: FeatureMatrix, name: str) -> list[float]:
    return [float(v) for v in matrix.column(name)[matrix.entity == "u0"]]


def test_windows_count_only_strictly_earlier_events_of_the_same_user() -> None:
    m = build_features(dataset(TIMELINE))
    assert user0(m, "txn_count_1h") == [0, 1, 2, 2, 0, 0, 0]
    assert user0(m, "amount_sum_1h") == [0, 10, 30, 30, 0, 0, 0]
    assert user0(m, "txn_count_24h") == [0, 1, 2, 2, 4, 1, 0]
    assert user0(m, "amount_sum_24h") == [0, 10, 30, 30, 100, 50, 0]
    assert user0(m, "txn_count_7d") == [0, 1, 2, 2, 4, 5, 0]
    assert user0(m, "history_count") == [0, 1, 2, 2, 4, 5, 6]
    since = user0(m, "seconds_since_prev")
    assert math.isnan(since[0])
    assert since[1:] == [1800, 1200, 1200, 4200, 24 * HOUR, 9 * DAY - 26 * HOUR]
    # the other user's own first transaction has no history at all
    other = m.column("history_count")[m.entity == "u1"]
    assert other.tolist() == [0]


def test_a_feature_never_changes_when_later_events_change() -> None:
    base = build_features(dataset(TIMELINE))
    for cut in range(1, len(TIMELINE)):
        cut_ts = T0 + TIMELINE[cut][1]
        # replace everything from `cut` on by wild, different events
        future = [(u, t, a * 1000 + 7) for u, t, a in TIMELINE[cut:]]
        future += [(0, TIMELINE[cut][1] + 1, 5e6), (1, TIMELINE[cut][1] + 5, 1.0)]
        changed = build_features(dataset(TIMELINE[:cut] + future))
        earlier_base = base.timestamp < cut_ts
        earlier_changed = changed.timestamp < cut_ts
        assert np.array_equal(
            base.transaction_id[earlier_base], changed.transaction_id[earlier_changed]
        )
        np.testing.assert_array_equal(
            base.values[earlier_base], changed.values[earlier_changed], err_msg=f"cut {cut}"
        )


def test_the_current_amount_is_a_request_input_not_history() -> None:
    m = build_features(dataset(TIMELINE))
    hist = user0(m, "history_count")
    z = user0(m, "amount_log_zscore")
    assert all(math.isnan(v) for v, h in zip(z, hist, strict=True) if h < 3)
    # same second, same history: only the amount-based inputs differ
    a, b = (m.entity == "u0").nonzero()[0][2:4]
    differs = [n for n in FEATURE_NAMES if m.column(n)[a] != m.column(n)[b]]
    assert differs == ["amount", "amount_log_zscore"]
    history = np.log1p([10.0, 20.0, 30.0, 40.0])
    expected = (np.log1p(50.0) - history.mean()) / history.std()
    assert z[4] == pytest.approx(expected)


def test_profile_and_request_time_features() -> None:
    m = build_features(dataset(TIMELINE))
    assert user0(m, "hour_of_day") == [0, 0, 0, 0, 2, 2, 0]
    assert user0(m, "user_age") == [30] * 7
    assert user0(m, "account_age_days")[0] == 10
    assert user0(m, "far_from_home") == [0, 0, 0, 0, 0, 0, 1]  # the last one is in sg
    assert m.column("far_from_home")[m.entity == "u1"].tolist() == [1]  # uk user in us-east
    assert set(m.column("category_risk").tolist()) == {0.02}


def test_history_aggregates_agree_with_a_brute_force_scan() -> None:
    data = generate(FraudDataConfig(n_users=40, n_days=10, seed=5))
    tx = data.transactions
    agg = history_aggregates(tx.user_index, tx.timestamp, tx.amount)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(tx), 200, replace=False):
        mine = (tx.user_index == tx.user_index[i]) & (tx.timestamp < tx.timestamp[i])
        for window, width in (("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY)):
            inside = mine & (tx.timestamp >= tx.timestamp[i] - width)
            assert agg[f"txn_count_{window}"][i] == inside.sum()
            assert agg[f"amount_sum_{window}"][i] == pytest.approx(tx.amount[inside].sum())
        assert agg["history_count"][i] == mine.sum()


def test_feature_store_rows_hold_the_training_values_at_each_timestamp() -> None:
    data = dataset(TIMELINE)
    m = build_features(data)
    rows = feature_store_rows(data)
    history = [r for r in rows if r.view == HISTORY_VIEW]
    assert len(history) == len(data.transactions)
    for i, row in enumerate(history):
        assert row.entity_key == {"user_id": str(data.transactions.user_id[i])}
        assert row.event_timestamp == int(data.transactions.timestamp[i])
        assert set(row.values) == set(HISTORY_FEATURES)
        assert row.values["txn_count_24h"] == m.column("txn_count_24h")[i]
    first = history[0].values
    assert first["amount_log_mean"] is None and first["last_txn_ts"] is None
    views = {r.view for r in rows}
    assert views == {"user_transactions", "user_profile", "merchant_profile"}
    stored = {
        ref.split(":")[0]
        for ref in FEATURE_REFS.values()
        if not ref.startswith(("request", "transform"))
    }
    assert stored <= views
    assert set(FEATURE_REFS) == set(FEATURE_NAMES)
