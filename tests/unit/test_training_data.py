"""The synthetic fraud data: deterministic, realistic fraud rate, not a toy."""

from __future__ import annotations

import numpy as np
import pytest

from mlbackend_training.fraud_data import (
    CATEGORY_NAMES,
    HOUR,
    REGION_NAMES,
    FraudDataConfig,
    FraudDataset,
    generate,
)
from mlbackend_training.fraud_features import build_features

SMALL = FraudDataConfig(n_users=300, n_days=20, seed=3)


@pytest.fixture(scope="module")
def default_data() -> FraudDataset:
    return generate(FraudDataConfig())


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, again = generate(SMALL), generate(SMALL)
    assert first.digest() == again.digest()
    for name, col in first.transactions.columns().items():
        assert np.array_equal(col, again.transactions.columns()[name]), name
    other = generate(FraudDataConfig(n_users=300, n_days=20, seed=4))
    assert other.digest() != first.digest()


def test_default_size_and_fraud_rate(default_data: FraudDataset) -> None:
    tx = default_data.transactions
    assert 100_000 <= len(tx) <= 150_000
    assert 0.01 <= default_data.fraud_rate <= 0.03
    assert len(np.unique(tx.transaction_id)) == len(tx)
    assert np.all(np.diff(tx.timestamp) >= 0), "sorted by time"
    assert tx.timestamp.min() >= default_data.config.start
    assert tx.timestamp.max() < default_data.config.end
    assert set(np.unique(tx.category)) <= set(CATEGORY_NAMES)
    assert set(np.unique(tx.region)) <= set(REGION_NAMES)
    assert np.all(tx.amount > 0)


def test_every_pattern_has_legitimate_look_alikes(default_data: FraudDataset) -> None:
    tx = default_data.transactions
    for scenario in ("card_testing", "spree", "amount_spike", "night_risky", "far_from_home"):
        rows = tx.scenario == scenario
        rate = tx.is_fraud[rows].mean()
        assert 0.2 < rate < 0.95, (scenario, rate)
    ordinary = tx.scenario == "ordinary"
    assert tx.is_fraud[ordinary].sum() > 0, "some fraud looks perfectly ordinary"


def test_rule_scorer_signals_occur_in_both_classes(default_data: FraudDataset) -> None:
    features = build_features(default_data)
    fraud = features.label == 1
    signals = {
        "amount > 10,000": features.column("amount") > 10_000,
        "user age < 25": features.column("user_age") < 25,
        "more than 100 transactions in 24 h": features.column("txn_count_24h") > 100,
    }
    for name, signal in signals.items():
        assert (signal & fraud).sum() > 0, f"{name} never fraud"
        assert (signal & ~fraud).sum() > 0, f"{name} never legitimate"


def test_daily_rhythm_is_quiet_at_night(default_data: FraudDataset) -> None:
    hours = (default_data.transactions.timestamp % 86_400) // HOUR
    night = np.isin(hours, [1, 2, 3, 4]).mean()
    evening = np.isin(hours, [17, 18, 19, 20]).mean()
    assert night * 4 < evening


def test_profiles_and_rows() -> None:
    data = generate(SMALL)
    users = data.users
    assert len(users) == SMALL.n_users
    assert users.age.min() >= 18
    new_accounts = users.signup_ts >= SMALL.start
    assert 0 < new_accounts.sum() < len(users)
    row = data.transactions.to_rows()[0]
    assert set(row) >= {"transaction_id", "user_id", "merchant_id", "category", "amount"}
    assert isinstance(row["amount"], float) and isinstance(row["timestamp"], int)
    assert data.merchant_category[row["merchant_id"]] == row["category"]


def test_too_small_a_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        FraudDataConfig(n_users=2)
