"""Contract of the registry's metadata store, run on SQLite and on a real PostgreSQL.

The last tests drive :class:`RegistryCore` over the same stores: concurrent uploads,
blob dedup and reference counting, and Watch resuming from the persisted change log.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlbackend_registry.core.domain import (
    Action,
    ArtifactFormat,
    AuditInfo,
    RegisteredModel,
    Stage,
    VersionDraft,
    VersionStatus,
)
from mlbackend_registry.core.service import RegistryCore, UploadSpec
from mlbackend_registry.stores.artifacts import ArtifactStore
from mlbackend_registry.stores.sqlalchemy_store import SqlAlchemyStore
from mlbackend_runtime.errors import AlreadyExists, FailedPrecondition, InvalidInput, NotFound

WHO = AuditInfo("alice", "because", "req-1")
DRAFT = VersionDraft(
    format=ArtifactFormat.SKOPS,
    framework_name="scikit-learn",
    framework_version="1.6.1",
    signature={"features": [{"name": "amount", "dtype": "DATA_TYPE_DOUBLE"}]},
    feature_refs=("tx:amount",),
    metrics={"f1": 0.8},
    tags={"team": "fraud"},
)


def _version(store: SqlAlchemyStore, model: str = "fraud", digest: str = "a" * 64) -> int:
    return store.create_version(model, DRAFT, digest, 10, WHO, create_model=True).version


def test_migrations_are_idempotent(store: SqlAlchemyStore) -> None:
    store.migrate()
    assert store.head_revision() == 0


def test_model_create_get_duplicate(store: SqlAlchemyStore) -> None:
    created = store.create_model(
        RegisteredModel("fraud", "detects fraud", {"team": "risk"}, created_by="alice"), WHO
    )
    assert created.name == "fraud" and created.tags == {"team": "risk"}
    assert store.get_model("fraud").created_by == "alice"
    with pytest.raises(AlreadyExists):
        store.create_model(RegisteredModel("fraud"), WHO)
    with pytest.raises(NotFound):
        store.get_model("nope")


def test_list_models_pages_prefix_and_tags(store: SqlAlchemyStore) -> None:
    for i in range(7):
        tags = {"team": "risk" if i % 2 else "growth"}
        store.create_model(RegisteredModel(f"m{i}", tags=tags), WHO)
    store.create_model(RegisteredModel("other"), WHO)
    first = store.list_models("m", {}, None, 3)
    assert [m.name for m in first] == ["m0", "m1", "m2"]
    rest = store.list_models("m", {}, first[-1].name, 10)
    assert [m.name for m in rest] == ["m3", "m4", "m5", "m6"]
    assert [m.name for m in store.list_models("", {"team": "risk"}, None, 10)] == ["m1", "m3", "m5"]
    assert store.list_models("m_", {}, None, 10) == []  # '_' is literal, not a wildcard


def test_update_model_records_before_and_after(store: SqlAlchemyStore) -> None:
    store.create_model(RegisteredModel("fraud", "old"), WHO)
    updated = store.update_model("fraud", "new", None, AuditInfo("bob", "typo"))
    assert updated.description == "new"
    event = store.list_audit("fraud", Action.MODEL_UPDATED, None, None, 0, 10)[0]
    assert event.actor == "bob" and event.reason == "typo"
    assert event.before is not None and event.before["description"] == "old"
    assert event.after is not None and event.after["description"] == "new"


def test_versions_are_numbered_without_gaps_under_concurrency(store: SqlAlchemyStore) -> None:
    store.create_model(RegisteredModel("fraud"), WHO)
    with ThreadPoolExecutor(10) as pool:
        numbers = list(pool.map(lambda i: _version(store, digest=f"{i:064x}"), range(10)))
    assert sorted(numbers) == list(range(1, 11))
    assert store.get_model("fraud").latest_version == 10


def test_version_metadata_round_trips(store: SqlAlchemyStore) -> None:
    _version(store)
    got = store.get_version("fraud", 1)
    assert got.draft == DRAFT
    assert got.status is VersionStatus.READY and got.stage is Stage.NONE
    assert got.created_by == "alice" and got.sha256 == "a" * 64 and got.size_bytes == 10


def test_get_version_by_number_alias_and_latest(store: SqlAlchemyStore) -> None:
    for _ in range(3):
        _version(store)
    store.set_alias("fraud", "production", 2, None, WHO)
    assert store.get_version("fraud", "latest").version == 3
    assert store.get_version("fraud", "production").version == 2
    assert store.get_version("fraud", 2).aliases == ("production",)
    with pytest.raises(NotFound):
        store.get_version("fraud", 9)
    with pytest.raises(NotFound):
        store.get_version("fraud", "staging")
    with pytest.raises(NotFound):
        store.get_version("nope", "latest")


def test_list_versions_newest_first_with_filters(store: SqlAlchemyStore) -> None:
    for _ in range(5):
        _version(store)
    store.transition_stage("fraud", 2, Stage.STAGING, False, WHO)
    page = store.list_versions("fraud", {}, None, None, None, 2)
    assert [v.version for v in page] == [5, 4]
    assert [v.version for v in store.list_versions("fraud", {}, None, None, 4, 10)] == [3, 2, 1]
    staged = store.list_versions("fraud", {}, Stage.STAGING, None, None, 10)
    assert [v.version for v in staged] == [2]
    assert store.list_versions("fraud", {"team": "other"}, None, None, None, 10) == []


def test_alias_set_move_and_rollback_keep_history(store: SqlAlchemyStore) -> None:
    for _ in range(3):
        _version(store)
    store.set_alias("fraud", "production", 1, None, WHO)
    store.set_alias("fraud", "production", 2, None, WHO)
    moved = store.set_alias("fraud", "production", 3, None, WHO)
    assert (moved.version, moved.previous_version) == (3, 2)
    back = store.rollback_alias("fraud", "production", AuditInfo("bob", "v3 is bad"))
    assert (back.version, back.previous_version) == (2, 3)
    assert store.rollback_alias("fraud", "production", WHO).version == 1
    with pytest.raises(FailedPrecondition):
        store.rollback_alias("fraud", "production", WHO)
    assert store.get_model("fraud").aliases == {"production": 1}
    actions = [e.action for e in store.list_audit("fraud", None, None, None, 0, 100)]
    assert actions.count(Action.ALIAS_ROLLED_BACK) == 2


def test_setting_the_same_alias_again_is_a_no_op(store: SqlAlchemyStore) -> None:
    _version(store)
    store.set_alias("fraud", "production", 1, None, WHO)
    head = store.head_revision()
    store.set_alias("fraud", "production", 1, None, WHO)
    assert store.head_revision() == head


def test_alias_compare_and_set(store: SqlAlchemyStore) -> None:
    _version(store)
    _version(store)
    with pytest.raises(FailedPrecondition):
        store.set_alias("fraud", "production", 1, 2, WHO)
    store.set_alias("fraud", "production", 1, 0, WHO)
    store.set_alias("fraud", "production", 2, 1, WHO)
    with pytest.raises(FailedPrecondition):
        store.set_alias("fraud", "production", 1, 0, WHO)


def test_stage_transitions_are_validated(store: SqlAlchemyStore) -> None:
    _version(store)
    _version(store)
    with pytest.raises(FailedPrecondition):
        store.transition_stage("fraud", 1, Stage.PRODUCTION, False, WHO)  # NONE -> PRODUCTION
    store.transition_stage("fraud", 1, Stage.STAGING, False, WHO)
    store.transition_stage("fraud", 1, Stage.PRODUCTION, False, WHO)
    store.transition_stage("fraud", 2, Stage.STAGING, False, WHO)
    promoted = store.transition_stage("fraud", 2, Stage.PRODUCTION, True, WHO)
    assert promoted.stage is Stage.PRODUCTION
    assert store.get_version("fraud", 1).stage is Stage.ARCHIVED
    with pytest.raises(FailedPrecondition):
        store.set_alias("fraud", "production", 1, None, WHO)  # archived takes no alias
    store.set_alias("fraud", "production", 2, None, WHO)
    with pytest.raises(FailedPrecondition):
        store.transition_stage("fraud", 2, Stage.ARCHIVED, False, WHO)  # an alias holds it


def test_deletes_are_refused_while_an_alias_points_there(store: SqlAlchemyStore) -> None:
    _version(store, digest="a" * 64)
    _version(store, digest="b" * 64)
    store.set_alias("fraud", "production", 2, None, WHO)
    with pytest.raises(FailedPrecondition):
        store.delete_model("fraud", WHO)
    with pytest.raises(FailedPrecondition):
        store.delete_version("fraud", 2, WHO)
    assert store.delete_version("fraud", 1, WHO) == {"a" * 64}
    assert store.unreferenced({"a" * 64, "b" * 64}) == {"a" * 64}
    store.delete_alias("fraud", "production", WHO)
    assert store.delete_model("fraud", WHO) == {"b" * 64}
    with pytest.raises(NotFound):
        store.get_model("fraud")
    assert store.referenced_digests() == set()


def test_failed_mutations_leave_no_audit_event(store: SqlAlchemyStore) -> None:
    _version(store)
    store.transition_stage("fraud", 1, Stage.ARCHIVED, False, WHO)
    head = store.head_revision()
    with pytest.raises(FailedPrecondition):
        store.set_alias("fraud", "production", 1, None, WHO)
    assert store.head_revision() == head


def test_every_mutation_is_audited_with_actor_reason_and_request_id(
    store: SqlAlchemyStore,
) -> None:
    _version(store)
    store.set_alias("fraud", "champion", 1, None, WHO)
    events = store.list_audit("fraud", None, None, None, 0, 10)
    assert [e.action for e in events] == [
        Action.MODEL_CREATED,
        Action.VERSION_CREATED,
        Action.ALIAS_SET,
    ]
    assert all((e.actor, e.reason, e.request_id) == ("alice", "because", "req-1") for e in events)
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    assert events[2].before is None and events[2].after is not None
    assert store.list_audit("other", None, None, None, 0, 10) == []


def test_notes_are_audited_but_are_not_changes(store: SqlAlchemyStore) -> None:
    _version(store)
    head = store.head_revision()
    note = store.create_note("fraud", 1, AuditInfo("gate", "PR-AUC 0.69 < 0.71: not promoted"))
    assert (note.revision, note.action, note.resource) == (
        head + 1,
        Action.NOTE,
        "models/fraud/versions/1",
    )
    assert store.list_audit("fraud", Action.NOTE, None, None, 0, 10) == [note]
    assert store.changes("fraud", head, 10) == []
    with pytest.raises(NotFound):
        store.create_note("fraud", 7, WHO)


def test_change_log_and_snapshot_agree(store: SqlAlchemyStore) -> None:
    _version(store)
    store.set_alias("fraud", "production", 1, None, WHO)
    snapshot = store.snapshot(None)
    assert snapshot.revision == store.head_revision() == 3
    assert [m.name for m in snapshot.models] == ["fraud"]
    assert [v.version for v in snapshot.versions] == [1]
    assert [(a.alias, a.version) for a in snapshot.aliases] == [("production", 1)]
    store.delete_alias("fraud", "production", WHO)
    changes = store.changes("fraud", 3, 10)
    assert [(c.revision, c.resource, c.state) for c in changes] == [
        (4, "models/fraud/aliases/production", None)
    ]
    assert store.changes("other", 0, 10) == []


# ---- the core over each store ---------------------------------------------------------


def _core(store: SqlAlchemyStore, root: Path, **kwargs: object) -> RegistryCore:
    return RegistryCore(store, ArtifactStore(root / "artifacts"), **kwargs)  # type: ignore[arg-type]


async def _chunks(data: bytes, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _spec(data: bytes, **kwargs: object) -> UploadSpec:
    values: dict[str, object] = {
        "model": "fraud",
        "draft": DRAFT,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "create_model": True,
    }
    values.update(kwargs)
    return UploadSpec(**values)  # type: ignore[arg-type]


def _skops(n: int) -> bytes:
    return b"PK\x03\x04" + n.to_bytes(8, "big") * 100


async def test_core_concurrent_uploads_and_blob_refcounts(
    store: SqlAlchemyStore, tmp_path: Path
) -> None:
    core = _core(store, tmp_path)
    await core.start()
    await core.create_model("fraud", "", {}, "")
    payloads = [_skops(i % 5) for i in range(10)]  # 5 distinct blobs, each twice
    created = await asyncio.gather(*(core.create_version(_spec(p), _chunks(p)) for p in payloads))
    assert sorted(v.version for v in created) == list(range(1, 11))
    blobs = list((tmp_path / "artifacts" / "sha256").glob("*/*"))
    assert len(blobs) == 5
    assert list((tmp_path / "artifacts" / "tmp").iterdir()) == []
    by_digest: dict[str, list[int]] = {}
    for v in created:
        by_digest.setdefault(v.sha256, []).append(v.version)
    digest, (first, second) = next(iter(by_digest.items()))
    await core.delete_version("fraud", first, "")
    assert (tmp_path / "artifacts" / "sha256" / digest[:2] / digest).exists()
    await core.delete_version("fraud", second, "")
    assert not (tmp_path / "artifacts" / "sha256" / digest[:2] / digest).exists()


async def test_core_rejects_mismatch_and_pickle_storing_nothing(
    store: SqlAlchemyStore, tmp_path: Path
) -> None:
    core = _core(store, tmp_path)
    await core.start()
    data = _skops(1)
    with pytest.raises(InvalidInput) as raised:
        await core.create_version(_spec(data, sha256="0" * 64), _chunks(data))
    assert raised.value.violations[0].field == "metadata.artifact_sha256"
    pickle_draft = VersionDraft(format=ArtifactFormat.PICKLE)
    with pytest.raises(InvalidInput):
        await core.create_version(_spec(b"\x80\x04.", draft=pickle_draft), _chunks(b"\x80\x04."))
    with pytest.raises(InvalidInput):  # not a zip: no skops file
        await core.create_version(_spec(b"\x80\x04."), _chunks(b"\x80\x04."))
    assert store.head_revision() == 0
    assert list((tmp_path / "artifacts").rglob("*.*")) == []
    allowed = _core(store, tmp_path, allow_pickle=True)
    version = await allowed.create_version(
        _spec(b"\x80\x04.", draft=pickle_draft), _chunks(b"\x80\x04.")
    )
    assert version.version == 1


async def test_core_watch_snapshot_then_live_then_resume_after_restart(
    store: SqlAlchemyStore, database_url: str, tmp_path: Path
) -> None:
    core = _core(store, tmp_path)
    await core.start()
    data = _skops(1)
    await core.create_version(_spec(data), _chunks(data))
    await core.create_version(_spec(data), _chunks(data))
    stream = core.watch("fraud", 0)
    kinds = [(await anext(stream)).kind for _ in range(4)]
    assert kinds == ["snapshot", "snapshot", "snapshot", "snapshot_complete"]
    await core.set_alias("fraud", "production", 1, None, "")
    live = await asyncio.wait_for(anext(stream), 5)
    assert (live.kind, live.resource) == ("upserted", "models/fraud/aliases/production")
    seen = live.revision
    await stream.aclose()
    await core.set_alias("fraud", "production", 2, None, "")
    await core.rollback_alias("fraud", "production", "")
    await core.close()

    reopened = SqlAlchemyStore(database_url)  # a registry restart: nothing kept in memory
    restarted = _core(reopened, tmp_path)
    await restarted.start()
    resumed = restarted.watch("fraud", seen)
    missed = [await asyncio.wait_for(anext(resumed), 5) for _ in range(2)]
    assert [e.revision for e in missed] == [seen + 1, seen + 2]
    assert [getattr(e.state, "version", None) for e in missed] == [2, 1]
    await resumed.aclose()
    with pytest.raises(InvalidInput):
        await anext(restarted.watch("fraud", seen + 100))
    reopened.close()


async def test_core_watch_sends_heartbeats_and_sees_other_writers_by_polling(
    store: SqlAlchemyStore, database_url: str, tmp_path: Path
) -> None:
    core = _core(store, tmp_path, heartbeat_seconds=0.3, poll_seconds=0.05)
    await core.start()
    stream = core.watch(None, 0)
    assert (await anext(stream)).kind == "snapshot_complete"
    beat = await asyncio.wait_for(anext(stream), 5)
    assert (beat.kind, beat.revision) == ("heartbeat", 0)
    other = SqlAlchemyStore(database_url)  # another replica: no in-process wake-up
    await asyncio.to_thread(other.create_model, RegisteredModel("fraud"), WHO)
    change = await asyncio.wait_for(anext(stream), 5)
    assert (change.kind, change.resource) == ("upserted", "models/fraud")
    await stream.aclose()
    other.close()
