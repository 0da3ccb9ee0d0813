"""Definitions as Python objects (``mlbackend_clients.feature_definitions``) become the
same ApplyDefinitions request as the equivalent YAML file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend_cli.features_cmd import load_definitions
from mlbackend_clients.feature_definitions import FeatureView, parse_duration

YAML = """
entities:
  - name: user
    join_keys: [{name: user_id, dtype: STRING}, {name: region, dtype: INT64}]
    description: a customer
    owner: risk
    tags: {team: risk}
  - name: merchant
    join_keys: [{name: merchant_id, dtype: STRING}]
feature_views:
  - name: user_stats
    entities: [user]
    ttl: 24h
    offline_retention: 365d
    description: spend
    owner: risk
    tags: {tier: gold}
    features:
      - {name: amount, dtype: DOUBLE, description: sum,
         constraints: {min: 0, max: 1e6, not_null: true, nan_policy: AS_NULL}}
      - {name: country, dtype: STRING, tags: {pii: "no"},
         constraints: {allowed_values: [DE, FR], max_length: 2}}
      - {name: txn_count, dtype: INT64, constraints: {allowed_values: [1, 2, 3]}}
      - {name: ratio, dtype: DOUBLE, constraints: {allowed_values: [0.5, 1.5]}}
      - {name: verified, dtype: BOOL, constraints: {allowed_values: [true]}}
      - {name: last_login, dtype: TIMESTAMP}
  - name: merchant_stats
    entities: [merchant]
    online: false
    ttl: 90s
    features:
      - {name: risk, dtype: DOUBLE}
feature_services:
  - name: fraud
    feature_refs: ["user_stats:amount", "user_stats:country", "user_stats:last_login",
                   "user_stats:txn_count"]
    request_inputs:
      - {name: tx_amount, dtype: DOUBLE, constraints: {min: 0, nan_policy: AS_NULL}}
      - {name: note, dtype: STRING, nullable: true, constraints: {allowed_values: [a, b]}}
    description: fraud model inputs
    owner: risk
    tags: {model: fraud}
    transforms:
      - {output: amount_z, standard_scale: {input: "user_stats:amount", mean: 10, std: 2}}
      - {output: amount_mm, min_max_scale: {input: "user_stats:amount", min: 0, max: 100}}
      - {output: amount_log, log1p: {input: "user_stats:amount"}}
      - {output: amount_clip, clip: {input: "user_stats:amount", min: 0}}
      - {output: amount_bucket, bucketize: {input: "user_stats:amount", boundaries: [1, 10, 100]}}
      - {output: country, one_hot: {input: "user_stats:country", categories: [DE, FR],
                                    include_other: true}}
      - {output: note_hash, hash_bucket: {input: note, num_buckets: 16, salt: s1}}
      - {output: tx_times, product: {left: tx_amount, right: "user_stats:amount"}}
      - {output: tx_ratio, ratio: {numerator: tx_amount, denominator: "user_stats:amount",
                                   default_value: -1}}
      - {output: login_hour, hour_of_day: {input: "user_stats:last_login",
                                           time_zone: Europe/Berlin}}
      - {output: login_day, day_of_week: {input: "user_stats:last_login"}}
      - {output: tx_minus, difference: {left: tx_amount, right: "user_stats:amount"}}
      - {output: login_s, epoch_seconds: {input: "user_stats:last_login"}}
    outputs: [amount_z, country, tx_ratio]
  - name: merchant_risk
    feature_refs: ["merchant_stats:risk"]
"""

PYTHON = """
from datetime import timedelta

from mlbackend_clients.feature_definitions import (
    Bucketize, Clip, Constraints, DayOfWeek, Difference, Entity, EpochSeconds, Feature,
    FeatureService, FeatureView, HashBucket, HourOfDay, JoinKey, Log1p, MinMaxScale, OneHot,
    Product, Ratio, RequestInput, StandardScale,
)

user = Entity(
    "user", [JoinKey("user_id", "STRING"), JoinKey("region", "INT64")],
    description="a customer", owner="risk", tags={"team": "risk"},
)
merchant = Entity("merchant", [JoinKey("merchant_id", "STRING")])

user_stats = FeatureView(
    "user_stats",
    entities=[user],
    ttl=timedelta(hours=24),
    offline_retention="365d",
    description="spend",
    owner="risk",
    tags={"tier": "gold"},
    features=[
        Feature("amount", "DOUBLE", description="sum", constraints=Constraints(
            min=0, max=1e6, not_null=True, nan_policy="AS_NULL")),
        Feature("country", "STRING", tags={"pii": "no"},
                constraints=Constraints(allowed_values=["DE", "FR"], max_length=2)),
        Feature("txn_count", "INT64", constraints=Constraints(allowed_values=[1, 2, 3])),
        Feature("ratio", "DOUBLE", constraints=Constraints(allowed_values=[0.5, 1.5])),
        Feature("verified", "BOOL", constraints=Constraints(allowed_values=[True])),
        Feature("last_login", "TIMESTAMP"),
    ],
)
merchant_stats = FeatureView(
    "merchant_stats", entities=["merchant"], online=False, ttl=90,
    features=[Feature("risk", "DOUBLE")],
)

amount = user_stats.ref("amount")
login = user_stats.ref("last_login")
services = [
    FeatureService(
        "fraud",
        feature_refs=[amount, user_stats.ref("country"), login, user_stats.ref("txn_count")],
        request_inputs=[
            RequestInput("tx_amount", "DOUBLE",
                         constraints=Constraints(min=0, nan_policy="AS_NULL")),
            RequestInput("note", "STRING", nullable=True,
                         constraints=Constraints(allowed_values=["a", "b"])),
        ],
        description="fraud model inputs",
        owner="risk",
        tags={"model": "fraud"},
        transforms=[
            StandardScale("amount_z", amount, mean=10, std=2),
            MinMaxScale("amount_mm", amount, min=0, max=100),
            Log1p("amount_log", amount),
            Clip("amount_clip", amount, min=0),
            Bucketize("amount_bucket", amount, boundaries=[1, 10, 100]),
            OneHot("country", "user_stats:country", ["DE", "FR"], include_other=True),
            HashBucket("note_hash", "note", num_buckets=16, salt="s1"),
            Product("tx_times", "tx_amount", amount),
            Ratio("tx_ratio", "tx_amount", amount, default_value=-1),
            HourOfDay("login_hour", login, time_zone="Europe/Berlin"),
            DayOfWeek("login_day", login),
            Difference("tx_minus", "tx_amount", amount),
            EpochSeconds("login_s", login),
        ],
        outputs=["amount_z", "country", "tx_ratio"],
    ),
    FeatureService("merchant_risk", feature_refs=[merchant_stats.ref("risk")]),
]
ALL = [user, user_stats]  # listed twice: still applied once
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "defs.yaml").write_text(YAML)
    (tmp_path / "defs.py").write_text(PYTHON)
    return tmp_path / "defs.yaml", tmp_path / "defs.py"


def test_python_module_and_yaml_give_the_same_request(files: tuple[Path, Path]) -> None:
    from_yaml, from_python = (load_definitions(path) for path in files)
    assert from_python == from_yaml
    assert from_python.SerializeToString(deterministic=True) == from_yaml.SerializeToString(
        deterministic=True
    )
    # Not trivially equal: everything made it through.
    assert [len(from_python.entities), len(from_python.feature_views)] == [2, 2]
    fraud = from_python.feature_services[0]
    assert len(fraud.transforms) == 13 and fraud.transforms[3].clip.HasField("min")
    assert not fraud.transforms[3].clip.HasField("max")
    view = from_python.feature_views[0]
    assert (view.ttl.seconds, view.offline_retention.seconds) == (86_400, 365 * 86_400)
    assert not view.HasField("online") and from_python.feature_views[1].online is False
    assert view.features[1].dtype == c.DATA_TYPE_STRING
    allowed = [v for f in view.features[2:5] for v in f.constraints.allowed_values]
    assert [v.WhichOneof("kind") for v in allowed] == [
        "int64_value", "int64_value", "int64_value", "double_value", "double_value", "bool_value"
    ]  # fmt: skip
    assert not view.features[5].HasField("constraints")
    tx_amount, note = fraud.request_inputs
    assert tx_amount.constraints.min == 0 and tx_amount.constraints.nan_policy == (
        f.NAN_POLICY_AS_NULL
    )
    assert [v.string_value for v in note.constraints.allowed_values] == ["a", "b"]


def test_one_attribute_or_a_module_on_the_path(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, python = files
    only = load_definitions(f"{python}:services")
    assert [s.name for s in only.feature_services] == ["fraud", "merchant_risk"]
    assert not only.entities and not only.feature_views
    (python.parent / "factory.py").write_text(
        "from defs import user\ndef build():\n    return [user]\n"
    )
    monkeypatch.chdir(python.parent)
    built = load_definitions("factory:build")  # imports its neighbour defs.py
    assert [e.name for e in built.entities] == ["user"]
    with pytest.raises(ValueError, match="no attribute 'nope'"):
        load_definitions(f"{python}:nope")
    (python.parent / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="no Entity, FeatureView or FeatureService"):
        load_definitions(str(python.parent / "empty.py"))


def test_builders_check_what_they_can_early() -> None:
    view = FeatureView("v", entities=["e"], features=[])
    with pytest.raises(ValueError, match="has no feature 'x'"):
        view.ref("x")
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1y")
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-1)
    assert parse_duration("1.5s").nanos == 500_000_000


def test_definitions_module_needs_no_server_side_dependency() -> None:
    code = (
        "import sys, mlbackend_clients.feature_definitions\n"
        "heavy = {'numpy', 'sklearn', 'pandas', 'pyarrow', 'mlbackend_runtime',\n"
        "         'mlbackend_features', 'prometheus_client', 'yaml'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
