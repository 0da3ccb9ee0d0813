"""The registry over real gRPC through RegistryClient, on an in-process server."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import random
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import skops.io as sio
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pg_server import PostgresServer, postgres
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import FunctionTransformer
from sweeps import sweep_service, sweep_streamed

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2 as pb
from mlbackend_clients.errors import RpcError, decode_error
from mlbackend_clients.registry import ArtifactIntegrityError, RegistryClient
from mlbackend_runtime.server import RunningServer

from conftest import Connect, StartService

__all__ = ["postgres"]  # the session fixture, re-exported for pytest

TOKENS = {
    "writer": "writer-token-0123456789",
    "admin": "admin-token-0123456789",
    "reader": "reader-token-0123456789",
}
MODEL = "models/fraud"


@functools.cache
def skops_bytes(seed: int) -> bytes:
    """A real skops file of a small fitted classifier, distinct per seed."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(40, 1))
    model = LogisticRegression().fit(features, (features[:, 0] > 0).astype(int))
    data: bytes = sio.dumps(model)
    return data


def version_spec(**kwargs: Any) -> pb.ModelVersion:
    return pb.ModelVersion(
        artifact=pb.Artifact(format=common_pb2.ARTIFACT_FORMAT_SKOPS),
        framework=pb.Framework(name="scikit-learn", version="1.6.1"),
        signature=common_pb2.InputSignature(
            features=[common_pb2.FeatureSpec(name="amount", dtype=common_pb2.DATA_TYPE_DOUBLE)]
        ),
        output=common_pb2.OutputSpec(
            kind=common_pb2.OUTPUT_KIND_CLASSIFIER,
            classes=[common_pb2.Value(int64_value=0), common_pb2.Value(int64_value=1)],
        ),
        feature_refs=["tx:amount"],
        metrics={"pr_auc": 0.71},
        input_example=[
            common_pb2.FeatureMap(values={"amount": common_pb2.Value(double_value=3.5)})
        ],
        **kwargs,
    )


def card_upload(card: bytes, attachment_id: str) -> list[pb.UploadAttachmentRequest]:
    """An UploadAttachment call's messages: a markdown ``card`` for version 1."""
    metadata = pb.UploadAttachmentRequest.Metadata(
        parent=f"{MODEL}/versions/1",
        attachment_id=attachment_id,
        content_type="text/markdown",
        sha256=hashlib.sha256(card).hexdigest(),
        size_bytes=len(card),
    )
    return [pb.UploadAttachmentRequest(metadata=metadata), pb.UploadAttachmentRequest(chunk=card)]


@pytest.fixture(params=["sqlite", "postgresql"])
async def registry(request: pytest.FixtureRequest, start_service: StartService) -> RunningServer:
    """The registry on each metadata engine (PostgreSQL: a fresh database per test)."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        return await start_service("registry", database_url=server.create_database())
    return await start_service("registry")


@pytest.fixture
def client(registry: RunningServer, connect: Connect) -> RegistryClient:
    made = connect("registry", registry)
    assert isinstance(made, RegistryClient)
    return made


async def call(awaitable: Any) -> Any:
    """Await a stub call, turning a failure into the decoded RpcError."""
    try:
        return await awaitable
    except grpc.aio.AioRpcError as exc:
        raise decode_error(exc) from None


def blobs(server: RunningServer) -> list[Path]:
    return sorted((server.settings.data_dir / "artifacts" / "sha256").glob("*/*"))


async def test_upload_small_and_multi_mib_artifacts_round_trip(
    client: RegistryClient, registry: RunningServer, tmp_path: Path
) -> None:
    small = skops_bytes(1)
    v1 = await client.upload_version(MODEL, small, version_spec(), create_registered_model=True)
    assert (v1.name, v1.version, v1.status) == (
        "models/fraud/versions/1",
        1,
        pb.MODEL_VERSION_STATUS_READY,
    )
    assert v1.artifact.sha256 == hashlib.sha256(small).hexdigest()
    assert v1.signature.features[0].name == "amount"
    assert v1.input_example[0].values["amount"].double_value == 3.5
    assert v1.created_by == "anonymous"

    big_path = tmp_path / "big.onnx"  # ONNX is not inspected yet: any bytes will do
    big_path.write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    onnx = version_spec()
    onnx.artifact.format = common_pb2.ARTIFACT_FORMAT_ONNX
    v2 = await client.upload_version(MODEL, big_path, onnx)
    assert v2.version == 2 and v2.artifact.size_bytes == big_path.stat().st_size

    out = io.BytesIO()
    header = await client.download_artifact("models/fraud/versions/latest", out)
    assert header.model_version == "models/fraud/versions/2"
    assert out.getvalue() == big_path.read_bytes()
    _, data = await client.download_artifact_bytes("models/fraud/versions/1")
    assert data == small


async def test_checksum_mismatch_is_rejected_and_nothing_is_stored(
    client: RegistryClient, registry: RunningServer
) -> None:
    data = skops_bytes(2)

    async def requests() -> AsyncIterator[pb.CreateModelVersionRequest]:
        meta = pb.CreateModelVersionRequest.Metadata(
            parent=MODEL,
            model_version=version_spec(),
            artifact_sha256=hashlib.sha256(b"something else").hexdigest(),
            create_registered_model=True,
        )
        yield pb.CreateModelVersionRequest(metadata=meta)
        yield pb.CreateModelVersionRequest(chunk=data)

    with pytest.raises(RpcError) as raised:
        await call(client.stub.CreateModelVersion(requests()))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in raised.value.violations] == ["metadata.artifact_sha256"]
    assert blobs(registry) == []
    assert list((registry.settings.data_dir / "artifacts" / "tmp").iterdir()) == []
    with pytest.raises(RpcError) as missing:
        await call(client.stub.GetRegisteredModel(pb.GetRegisteredModelRequest(name=MODEL)))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_chunk_before_metadata_and_pickle_are_rejected(client: RegistryClient) -> None:
    async def chunk_first() -> AsyncIterator[pb.CreateModelVersionRequest]:
        yield pb.CreateModelVersionRequest(chunk=b"PK\x03\x04")

    with pytest.raises(RpcError) as raised:
        await call(client.stub.CreateModelVersion(chunk_first()))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.violations[0].field == "metadata"

    pickled = version_spec()
    pickled.artifact.format = common_pb2.ARTIFACT_FORMAT_PICKLE
    with pytest.raises(RpcError) as refused:
        await client.upload_version(MODEL, b"\x80\x04K\x01.", pickled, create_registered_model=True)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "allow-pickle" in refused.value.violations[0].description


async def test_skops_with_untrusted_types_or_not_skops_is_rejected_naming_why(
    client: RegistryClient, registry: RunningServer
) -> None:
    unsafe = sio.dumps(FunctionTransformer(func=print))
    with pytest.raises(RpcError) as raised:
        await client.upload_version(MODEL, unsafe, version_spec(), create_registered_model=True)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "builtins.print" in raised.value.violations[0].description
    with pytest.raises(RpcError) as not_skops:
        await client.upload_version(
            MODEL, b"PK\x03\x04 not really a zip", version_spec(), create_registered_model=True
        )
    assert not_skops.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert blobs(registry) == []
    assert list((registry.settings.data_dir / "artifacts" / "tmp").iterdir()) == []


async def test_pickle_is_accepted_when_the_operator_allows_it(
    start_service: StartService, connect: Connect
) -> None:
    client = connect("registry", await start_service("registry", allow_pickle=True))
    pickled = version_spec()
    pickled.artifact.format = common_pb2.ARTIFACT_FORMAT_PICKLE
    version = await client.upload_version(
        MODEL, b"\x80\x04K\x01.", pickled, create_registered_model=True
    )
    assert version.artifact.format == common_pb2.ARTIFACT_FORMAT_PICKLE


async def test_concurrent_uploads_get_one_to_n_and_identical_blobs_are_stored_once(
    client: RegistryClient, registry: RunningServer
) -> None:
    await client.stub.CreateRegisteredModel(
        pb.CreateRegisteredModelRequest(registered_model_id="fraud")
    )
    payloads = [skops_bytes(i % 4) for i in range(20)]
    created = await asyncio.gather(
        *(client.upload_version(MODEL, p, version_spec()) for p in payloads)
    )
    assert sorted(v.version for v in created) == list(range(1, 21))
    assert len(blobs(registry)) == 4


async def test_get_by_alias_and_latest_set_move_rollback(client: RegistryClient) -> None:
    for seed in range(3):
        await client.upload_version(
            MODEL, skops_bytes(seed), version_spec(), create_registered_model=True
        )
    stub = client.stub
    await stub.SetAlias(pb.SetAliasRequest(parent=MODEL, alias="production", version=1))
    moved = await stub.SetAlias(pb.SetAliasRequest(parent=MODEL, alias="production", version=3))
    assert (moved.alias.version, moved.alias.previous_version) == (3, 1)
    got = await stub.GetModelVersion(pb.GetModelVersionRequest(name=f"{MODEL}/versions/production"))
    assert got.model_version.version == 3 and list(got.model_version.aliases) == ["production"]
    latest = await stub.GetModelVersion(pb.GetModelVersionRequest(name=f"{MODEL}/versions/latest"))
    assert latest.model_version.version == 3
    back = await stub.RollbackAlias(
        pb.RollbackAliasRequest(name=f"{MODEL}/aliases/production", reason="v3 regressed")
    )
    assert (back.alias.version, back.alias.previous_version) == (1, 3)
    model = await stub.GetRegisteredModel(pb.GetRegisteredModelRequest(name=MODEL))
    assert dict(model.registered_model.aliases) == {"production": 1}


async def test_delete_is_refused_while_aliased_and_blobs_are_freed(
    client: RegistryClient, registry: RunningServer
) -> None:
    await client.upload_version(MODEL, skops_bytes(1), version_spec(), create_registered_model=True)
    stub = client.stub
    await stub.SetAlias(pb.SetAliasRequest(parent=MODEL, alias="production", version=1))
    for request in (
        stub.DeleteRegisteredModel(pb.DeleteRegisteredModelRequest(name=MODEL)),
        stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name=f"{MODEL}/versions/1")),
    ):
        with pytest.raises(RpcError) as raised:
            await call(request)
        assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    await stub.DeleteAlias(pb.DeleteAliasRequest(name=f"{MODEL}/aliases/production"))
    await stub.DeleteRegisteredModel(pb.DeleteRegisteredModelRequest(name=MODEL))
    assert blobs(registry) == []


async def test_stage_transitions_over_grpc(client: RegistryClient) -> None:
    await client.upload_version(MODEL, skops_bytes(1), version_spec(), create_registered_model=True)
    stub = client.stub
    name = f"{MODEL}/versions/1"
    with pytest.raises(RpcError) as raised:
        await call(
            stub.TransitionStage(
                pb.TransitionStageRequest(name=name, stage=pb.MODEL_STAGE_PRODUCTION)
            )
        )
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    for stage in (pb.MODEL_STAGE_STAGING, pb.MODEL_STAGE_ARCHIVED):
        await stub.TransitionStage(pb.TransitionStageRequest(name=name, stage=stage))
    with pytest.raises(RpcError) as archived:
        await call(stub.SetAlias(pb.SetAliasRequest(parent=MODEL, alias="champion", version=1)))
    assert archived.value.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_audit_records_identity_reason_and_before_after(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{t} {role} {role}-user\n" for role, t in TOKENS.items()))
    server = await start_service("registry", token_file=tokens)
    writer = connect("registry", server, token=TOKENS["writer"])
    admin = connect("registry", server, token=TOKENS["admin"])
    data = skops_bytes(1)

    async def upload() -> AsyncIterator[pb.CreateModelVersionRequest]:
        yield pb.CreateModelVersionRequest(
            metadata=pb.CreateModelVersionRequest.Metadata(
                parent=MODEL,
                model_version=version_spec(),
                create_registered_model=True,
                artifact_sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        yield pb.CreateModelVersionRequest(chunk=data)

    # Explicit metadata: the channel's interceptor does not yet reach streaming calls
    # (see test_streaming_calls_carry_the_channel_token).
    created = await writer.stub.CreateModelVersion(upload(), metadata=_bearer("writer"))
    assert created.model_version.created_by == "writer-user"
    await writer.stub.SetAlias(
        pb.SetAliasRequest(parent=MODEL, alias="production", version=1, reason="beats v0")
    )
    await admin.stub.DeleteAlias(
        pb.DeleteAliasRequest(name=f"{MODEL}/aliases/production", reason="retire")
    )
    events = (
        await writer.stub.ListAuditEvents(pb.ListAuditEventsRequest(parent=MODEL))
    ).audit_events
    summary = [(pb.AuditAction.Name(e.action), e.actor, e.reason) for e in events]
    assert summary == [
        ("AUDIT_ACTION_MODEL_CREATED", "writer-user", ""),
        ("AUDIT_ACTION_VERSION_CREATED", "writer-user", ""),
        ("AUDIT_ACTION_ALIAS_SET", "writer-user", "beats v0"),
        ("AUDIT_ACTION_ALIAS_DELETED", "admin-user", "retire"),
    ]
    assert events[2].after["version"] == 1 and not events[2].HasField("before")
    assert all(e.request_id for e in events)
    page = await writer.stub.ListAuditEvents(pb.ListAuditEventsRequest(parent=MODEL, page_size=3))
    assert len(page.audit_events) == 3 and page.next_page_token
    rest = await writer.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(parent=MODEL, page_size=3, page_token=page.next_page_token)
    )
    assert [e.revision for e in rest.audit_events] == [events[3].revision]
    # A time past the year 9999 is the caller's error, named (not an internal one).
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await writer.stub.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=MODEL, start_time=Timestamp(seconds=2**40))
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in decode_error(raised.value).violations] == ["start_time"]
    note = await writer.stub.CreateAuditNote(
        pb.CreateAuditNoteRequest(resource=f"{MODEL}/versions/1", reason="v2 not promoted")
    )
    assert (note.audit_event.actor, note.audit_event.action) == (
        "writer-user",
        pb.AUDIT_ACTION_NOTE,
    )


def _bearer(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[role]}"),)


async def test_streaming_calls_carry_the_channel_token(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{t} {role} {role}-user\n" for role, t in TOKENS.items()))
    server = await start_service("registry", token_file=tokens)
    writer = connect("registry", server, token=TOKENS["writer"])
    version = await writer.upload_version(
        MODEL, skops_bytes(1), version_spec(), create_registered_model=True
    )
    assert version.created_by == "writer-user"
    _, data = await writer.download_artifact_bytes(f"{MODEL}/versions/1")
    assert data == skops_bytes(1)


async def test_watch_snapshot_then_alias_moves_then_resume(client: RegistryClient) -> None:
    for seed in range(2):
        await client.upload_version(
            MODEL, skops_bytes(seed), version_spec(), create_registered_model=True
        )
    await client.stub.SetAlias(pb.SetAliasRequest(parent=MODEL, alias="production", version=1))
    stream = client.stub.Watch(pb.WatchRequest(parent=MODEL))
    snapshot = []
    async for event in stream:
        snapshot.append(event)
        if event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT_COMPLETE:
            break
    assert [e.WhichOneof("state") for e in snapshot[:-1]] == [
        "registered_model",
        "model_version",
        "model_version",
        "alias",
    ]
    await client.stub.SetAlias(pb.SetAliasRequest(parent=MODEL, alias="production", version=2))
    moved = await asyncio.wait_for(anext(aiter(stream)), 5)
    assert moved.type == pb.WATCH_EVENT_TYPE_UPSERTED
    assert (moved.alias.alias, moved.alias.version) == ("production", 2)
    assert moved.revision > snapshot[-1].revision
    stream.cancel()

    await client.stub.RollbackAlias(pb.RollbackAliasRequest(name=f"{MODEL}/aliases/production"))
    await client.stub.DeleteAlias(pb.DeleteAliasRequest(name=f"{MODEL}/aliases/production"))
    resumed = client.stub.Watch(pb.WatchRequest(parent=MODEL, start_revision=moved.revision))
    it = aiter(resumed)
    missed = [await asyncio.wait_for(anext(it), 5) for _ in range(2)]
    assert [e.revision for e in missed] == [moved.revision + 1, moved.revision + 2]
    assert missed[0].alias.version == 1
    assert missed[1].type == pb.WATCH_EVENT_TYPE_DELETED
    resumed.cancel()


async def test_tampered_download_raises(client: RegistryClient, registry: RunningServer) -> None:
    await client.upload_version(MODEL, skops_bytes(1), version_spec(), create_registered_model=True)
    (blob,) = blobs(registry)
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactIntegrityError):
        await client.download_artifact_bytes(f"{MODEL}/versions/1")
    blob.write_bytes(blob.read_bytes()[:100])
    with pytest.raises(ArtifactIntegrityError):
        await client.download_artifact_bytes(f"{MODEL}/versions/1")


async def test_list_models_pages_and_filters(client: RegistryClient) -> None:
    for i in range(5):
        await client.stub.CreateRegisteredModel(
            pb.CreateRegisteredModelRequest(
                registered_model_id=f"m{i}",
                registered_model=pb.RegisteredModel(tags={"team": "risk" if i < 2 else "ads"}),
            )
        )
    first = await client.stub.ListRegisteredModels(pb.ListRegisteredModelsRequest(page_size=2))
    second = await client.stub.ListRegisteredModels(
        pb.ListRegisteredModelsRequest(page_size=2, page_token=first.next_page_token)
    )
    names = [m.name for m in (*first.registered_models, *second.registered_models)]
    assert names == ["models/m0", "models/m1", "models/m2", "models/m3"]
    risk = await client.stub.ListRegisteredModels(
        pb.ListRegisteredModelsRequest(tags={"team": "risk"})
    )
    assert [m.name for m in risk.registered_models] == ["models/m0", "models/m1"]
    updated = await client.stub.UpdateRegisteredModel(
        pb.UpdateRegisteredModelRequest(
            registered_model=pb.RegisteredModel(
                name="models/m0", description="new", tags={"x": "y"}
            ),
            update_mask={"paths": ["description"]},
        )
    )
    assert updated.registered_model.description == "new"
    assert dict(updated.registered_model.tags) == {"team": "risk"}


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        ("CreateRegisteredModel", pb.CreateRegisteredModelRequest(), "registered_model_id"),
        (
            "CreateRegisteredModel",
            pb.CreateRegisteredModelRequest(registered_model_id="a b"),
            "registered_model_id",
        ),
        (
            "CreateRegisteredModel",
            pb.CreateRegisteredModelRequest(
                registered_model_id="big",
                registered_model=pb.RegisteredModel(description="x" * 1_000_000),
            ),
            "registered_model.description",
        ),
        (
            "ListRegisteredModels",
            pb.ListRegisteredModelsRequest(page_token="garbage!"),
            "page_token",
        ),
        ("ListRegisteredModels", pb.ListRegisteredModelsRequest(page_size=-1), "page_size"),
        ("GetRegisteredModel", pb.GetRegisteredModelRequest(name=""), "name"),
        ("GetModelVersion", pb.GetModelVersionRequest(name="models/fraud/versions/-1"), "name"),
        ("SetAlias", pb.SetAliasRequest(parent=MODEL, alias="latest", version=1), "alias"),
        ("SetAlias", pb.SetAliasRequest(parent=MODEL, alias="7up", version=1), "alias"),
        ("Watch", pb.WatchRequest(start_revision=-5), "start_revision"),
        ("CreateAuditNote", pb.CreateAuditNoteRequest(resource=MODEL), "reason"),
        ("CreateAuditNote", pb.CreateAuditNoteRequest(resource="models/a/b"), "resource"),
    ],
)
async def test_bad_input_is_invalid_argument_with_field_violations(
    client: RegistryClient, method: str, request_message: Any, field: str
) -> None:
    rpc = getattr(client.stub, method)
    with pytest.raises(RpcError) as raised:
        if method == "Watch":
            await call(anext(aiter(rpc(request_message))))
        else:
            await call(rpc(request_message))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [v.field for v in raised.value.violations]
    assert await client.check_health(timeout=5) == "SERVING"


async def test_mangled_requests_get_the_callers_fault_codes(
    client: RegistryClient, registry: RunningServer
) -> None:
    """Every unary method, sent valid requests with bytes flipped, cut, inserted or
    repeated, or with fields set to edge values, cleared, added or removed (seeded),
    answers or refuses with a status that is the caller's fault, an INVALID_ARGUMENT
    naming its fields. Deleting methods get only empty requests changed."""
    for seed in range(2):
        await client.upload_version(
            MODEL, skops_bytes(seed), version_spec(), create_registered_model=True
        )
    await client.stub.SetAlias(pb.SetAliasRequest(parent=MODEL, alias="production", version=1))
    version = f"{MODEL}/versions/1"
    mask = FieldMask(paths=["description"])
    valid: dict[str, list[Message]] = {
        "CreateRegisteredModel": [pb.CreateRegisteredModelRequest(
            registered_model_id="churn", registered_model=pb.RegisteredModel(description="d"))],
        "GetRegisteredModel": [pb.GetRegisteredModelRequest(name=MODEL)],
        "ListRegisteredModels": [pb.ListRegisteredModelsRequest(page_size=2, tags={"a": "b"})],
        "UpdateRegisteredModel": [pb.UpdateRegisteredModelRequest(
            registered_model=pb.RegisteredModel(name=MODEL, description="d"), update_mask=mask)],
        "GetModelVersion": [pb.GetModelVersionRequest(name=f"{MODEL}/versions/production")],
        "ListModelVersions": [pb.ListModelVersionsRequest(parent=MODEL, page_size=1)],
        "UpdateModelVersion": [pb.UpdateModelVersionRequest(
            model_version=pb.ModelVersion(name=version, description="d"), update_mask=mask)],
        "ListAttachments": [pb.ListAttachmentsRequest(parent=version)],
        "SetAlias": [pb.SetAliasRequest(parent=MODEL, alias="challenger", version=2)],
        "RollbackAlias": [pb.RollbackAliasRequest(name=f"{MODEL}/aliases/production")],
        "TransitionStage": [pb.TransitionStageRequest(
            name=f"{MODEL}/versions/2", stage=pb.MODEL_STAGE_STAGING, reason="r")],
        "CreateAuditNote": [pb.CreateAuditNoteRequest(resource=version, reason="r")],
        "ListAuditEvents": [pb.ListAuditEventsRequest(parent=MODEL, page_size=2)],
    }  # fmt: skip
    rng = random.Random(int(os.environ.get("MLBACKEND_TEST_SEED", "20261208")))
    count = int(os.environ.get("MLBACKEND_TEST_MANGLED", "100"))
    async with grpc.aio.insecure_channel(registry.address) as channel:
        codes = await sweep_service(
            channel, pb, "ModelRegistryService", valid, count, rng, every_unary=True
        )
    answered = {name for name, seen in codes.items() if grpc.StatusCode.OK in seen}
    assert {"GetRegisteredModel", "ListModelVersions", "ListAuditEvents"} <= answered, answered
    # PostgreSQL stores no NUL in text: refused as the caller's (it used to be INTERNAL).
    nul = pb.UpdateRegisteredModelRequest(
        registered_model=pb.RegisteredModel(name=MODEL, description="a\x00b"), update_mask=mask
    )
    if registry.settings.database_url:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.stub.UpdateRegisteredModel(nul)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in decode_error(raised.value).violations] == ["request"]
    else:
        await client.stub.UpdateRegisteredModel(nul)


async def test_bad_messages_on_streams_get_the_callers_fault_codes(
    client: RegistryClient, registry: RunningServer
) -> None:
    """Uploads and downloads, one message mangled or with fields changed (and for
    uploads now and then one dropped or repeated; seeded): each message answered
    parses, and a call that fails gets a status that is the caller's fault, an
    INVALID_ARGUMENT naming its fields; no upload half stored."""
    await client.upload_version(MODEL, skops_bytes(0), version_spec(), create_registered_model=True)
    data = skops_bytes(1)
    card = b"# Model card\n" * 100
    upload = [
        pb.CreateModelVersionRequest(
            metadata=pb.CreateModelVersionRequest.Metadata(
                parent=MODEL,
                model_version=version_spec(),
                artifact_sha256=hashlib.sha256(data).hexdigest(),
            )
        ),
        pb.CreateModelVersionRequest(chunk=data[:100]),
        pb.CreateModelVersionRequest(chunk=data[100:]),
    ]
    attach = card_upload(card, "card.md")
    uploads = {"request_streaming": True, "response_streaming": False}
    downloads = {"request_streaming": False, "response_streaming": True}
    methods: list[tuple[str, Any, list[list[Message]], dict[str, bool]]] = [
        ("CreateModelVersion", pb.CreateModelVersionResponse, [upload], uploads),
        ("UploadAttachment", pb.UploadAttachmentResponse, [attach], uploads),
        ("DownloadModelArtifact", pb.DownloadModelArtifactResponse,
         [[pb.DownloadModelArtifactRequest(name=f"{MODEL}/versions/1", chunk_size_bytes=512)]],
         downloads),
        ("DownloadAttachment", pb.DownloadAttachmentResponse,
         [[pb.DownloadAttachmentRequest(name=f"{MODEL}/versions/1/attachments/card.md")]],
         downloads),
    ]  # fmt: skip
    rng = random.Random(int(os.environ.get("MLBACKEND_TEST_SEED", "20261208")))
    count = int(os.environ.get("MLBACKEND_TEST_MANGLED", "100"))
    service = "/mlbackend.registry.v1.ModelRegistryService/"
    async with grpc.aio.insecure_channel(registry.address) as channel:
        await channel.stream_unary(service + "UploadAttachment")(
            iter([m.SerializeToString() for m in attach]), timeout=10
        )
        for name, response_type, calls, streaming in methods:
            await sweep_streamed(
                channel, service + name, response_type, calls, count, rng, **streaming
            )
    # Every version stored is whole: its artifact downloads with its own checksum.
    listed = await client.stub.ListModelVersions(pb.ListModelVersionsRequest(parent=MODEL))
    for version in listed.model_versions:
        _, stored = await client.download_artifact_bytes(version.name)
        assert hashlib.sha256(stored).hexdigest() == version.artifact.sha256, version.name
    assert list((registry.settings.data_dir / "artifacts" / "tmp").iterdir()) == []


async def test_unknown_model_is_not_found(client: RegistryClient) -> None:
    with pytest.raises(RpcError) as raised:
        await call(
            client.stub.GetModelVersion(pb.GetModelVersionRequest(name=f"{MODEL}/versions/1"))
        )
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


async def test_attachments_upload_list_download(client: RegistryClient) -> None:
    await client.upload_version(MODEL, skops_bytes(1), version_spec(), create_registered_model=True)
    card = b"# Model card\n" * 1000

    stored = await client.stub.UploadAttachment(iter(card_upload(card, "model_card.md")))
    assert stored.attachment.name == f"{MODEL}/versions/1/attachments/model_card.md"
    listed = await client.stub.ListAttachments(
        pb.ListAttachmentsRequest(parent=f"{MODEL}/versions/1")
    )
    assert [a.content_type for a in listed.attachments] == ["text/markdown"]
    body = b""
    async for message in client.stub.DownloadAttachment(
        pb.DownloadAttachmentRequest(name=stored.attachment.name)
    ):
        body += message.chunk
    assert body == card
    version = await client.stub.GetModelVersion(
        pb.GetModelVersionRequest(name=f"{MODEL}/versions/1")
    )
    assert list(version.model_version.attachments) == ["model_card.md"]


async def test_upload_and_download_memory_stays_flat(
    start_service: StartService, connect: Connect, tmp_path: Path
) -> None:
    """48 MiB through upload and download: Python's heap peak stays far below the size."""
    client = connect("registry", await start_service("registry"))
    source, target = tmp_path / "big.onnx", tmp_path / "copy.onnx"
    with source.open("wb") as out:
        for _ in range(48):
            out.write(os.urandom(1024 * 1024))
    onnx = version_spec()
    onnx.artifact.format = common_pb2.ARTIFACT_FORMAT_ONNX
    tracemalloc.start()
    try:
        await client.upload_version(MODEL, source, onnx, create_registered_model=True)
        with target.open("wb") as out:
            await client.download_artifact(f"{MODEL}/versions/1", out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert target.read_bytes() == source.read_bytes()
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 48 MiB artifact"


async def test_versions_list_pages_filters_and_update(client: RegistryClient) -> None:
    for seed in range(5):
        await client.upload_version(
            MODEL,
            skops_bytes(seed),
            version_spec(tags={"seed": str(seed)}),
            create_registered_model=True,
        )
    stub = client.stub
    first = await stub.ListModelVersions(pb.ListModelVersionsRequest(parent=MODEL, page_size=2))
    assert [v.version for v in first.model_versions] == [5, 4]
    second = await stub.ListModelVersions(
        pb.ListModelVersionsRequest(parent=MODEL, page_size=2, page_token=first.next_page_token)
    )
    assert [v.version for v in second.model_versions] == [3, 2]
    with pytest.raises(RpcError) as raised:
        await call(
            stub.ListModelVersions(
                pb.ListModelVersionsRequest(
                    parent=MODEL,
                    page_token=first.next_page_token,
                    tags={"seed": "1"},
                )
            )
        )
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    await stub.TransitionStage(
        pb.TransitionStageRequest(name=f"{MODEL}/versions/2", stage=pb.MODEL_STAGE_STAGING)
    )
    staged = await stub.ListModelVersions(
        pb.ListModelVersionsRequest(parent=MODEL, stage=pb.MODEL_STAGE_STAGING)
    )
    assert [v.version for v in staged.model_versions] == [2]
    tagged = await stub.ListModelVersions(
        pb.ListModelVersionsRequest(parent=MODEL, tags={"seed": "3"})
    )
    assert [v.version for v in tagged.model_versions] == [4]
    updated = await stub.UpdateModelVersion(
        pb.UpdateModelVersionRequest(
            model_version=pb.ModelVersion(name=f"{MODEL}/versions/4", description="best so far"),
            update_mask={"paths": ["description"]},
        )
    )
    assert updated.model_version.description == "best so far"
    assert dict(updated.model_version.tags) == {"seed": "3"}
    with pytest.raises(RpcError) as bad_mask:
        await call(
            stub.UpdateModelVersion(
                pb.UpdateModelVersionRequest(
                    model_version=pb.ModelVersion(name=f"{MODEL}/versions/4"),
                    update_mask={"paths": ["metrics"]},
                )
            )
        )
    assert bad_mask.value.violations[0].field == "update_mask.paths"
