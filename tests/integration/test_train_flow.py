"""`mlbackend train fraud`'s flow through a real registry and feature store in-process.

Small data, so the runs take seconds: the flow registers and promotes; a deliberately
weak configuration is registered but not promoted, and the audit log says why; the
same seed and configuration give the same metrics.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mlbackend.registry.v1 import registry_pb2 as r
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_training.fraud_data import FraudDataConfig
from mlbackend_training.pipeline import EstimatorSpec, GateConfig, TrainingConfig
from mlbackend_training.train_flow import train_and_register

from conftest import Connect, StartService

CONFIG = TrainingConfig(
    data=FraudDataConfig(n_users=300, n_days=20, seed=5, spree_rate=0.4),
    estimator=EstimatorSpec("hist_gradient_boosting", {"max_iter": 60}),
    gate=GateConfig(min_pr_auc=0.1, min_roc_auc=0.6, min_recall_at_precision=0.0),
)
# Stumps and two boosting rounds: registrable, but clearly worse than the champion.
WEAK = replace(
    CONFIG,
    estimator=EstimatorSpec(
        "hist_gradient_boosting", {"max_iter": 2, "max_depth": 1, "learning_rate": 0.01}
    ),
)


@pytest.fixture
async def services(
    start_service: StartService, connect: Connect
) -> tuple[RegistryClient, FeatureStoreClient]:
    registry: RegistryClient = connect("registry", await start_service("registry"))
    features: FeatureStoreClient = connect("features", await start_service("features"))
    return registry, features


async def test_registers_promotes_then_refuses_a_weak_run_with_an_audited_reason(
    services: tuple[RegistryClient, FeatureStoreClient], tmp_path: Path
) -> None:
    registry, features = services
    first = await train_and_register(CONFIG, tmp_path, registry, features)
    assert (first.version, first.promoted, first.champion_version) == (1, True, None)
    assert first.feature_service == "fraud_features@1"

    got = (
        await registry.stub.GetModelVersion(
            r.GetModelVersionRequest(name="models/fraud_detection/versions/production")
        )
    ).model_version
    assert got.version == 1
    assert got.feature_service == "fraud_features@1"
    assert [s.name for s in got.signature.features] == list(first.local.run.features.names)
    assert got.output.decision_threshold == pytest.approx(first.local.run.threshold.threshold)
    assert got.metrics["pr_auc"] == pytest.approx(first.summary["evaluation"]["model"]["pr_auc"])
    assert got.lineage.run_uri.endswith(first.local.run_id)
    assert got.lineage.row_count == len(first.local.run.split.train)
    assert len(got.baseline_statistics.features) == len(got.signature.features)
    assert {"model_card.md", "pr_curve.png", "roc_curve.png", "confusion_matrix.png"} <= {
        a.rsplit("/", 1)[-1] for a in got.attachments
    }
    assert (tmp_path / "runs" / first.local.run_id / "model.skops").exists()

    weak = await train_and_register(WEAK, tmp_path, registry, features)
    assert (weak.version, weak.promoted, weak.champion_version) == (2, False, 1)
    assert not weak.local.run.gate.passed
    assert "worse than champion" in weak.decision
    alias = await registry.stub.GetModelVersion(
        r.GetModelVersionRequest(name="models/fraud_detection/versions/production")
    )
    assert alias.model_version.version == 1
    events = await registry.stub.ListAuditEvents(
        r.ListAuditEventsRequest(parent="models/fraud_detection", action=r.AUDIT_ACTION_NOTE)
    )
    notes = [e for e in events.audit_events if e.resource.endswith("/versions/2")]
    assert notes and "not promoted" in notes[0].reason
    assert "worse than champion" in notes[0].reason

    # Same seed and config: the same metrics (the champion comparison included).
    again = await train_and_register(CONFIG, tmp_path, registry, features)
    assert again.summary["evaluation"] == first.summary["evaluation"]
    assert again.local.run.lineage == first.local.run.lineage
    assert again.promoted  # equal to the champion is not worse
