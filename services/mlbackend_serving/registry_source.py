"""The registry as serving's source of model versions: its Watch stream and artifact
downloads through :class:`RegistryClient`, turned into the core's domain changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO

import grpc

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2 as pb
from mlbackend_clients.channel import ChannelOptions, TlsOptions
from mlbackend_clients.errors import RpcError
from mlbackend_clients.registry import ArtifactIntegrityError, RegistryClient
from mlbackend_models.loader import LoadPolicy
from mlbackend_runtime.server import ConfigError, RunningServer
from mlbackend_runtime.settings import ServerSettings
from mlbackend_serving.core.cache import ArtifactCache
from mlbackend_serving.core.follower import RegistryFollower
from mlbackend_serving.core.model import DType, FeatureSpec, OutputKind, OutputSpec, Scalar
from mlbackend_serving.core.service import ServingCore
from mlbackend_serving.core.versions import (
    AliasRemoved,
    AliasSet,
    Change,
    Example,
    Heartbeat,
    ModelRemoved,
    RevisionExpired,
    SnapshotComplete,
    SourceUnavailable,
    VersionInfo,
    VersionPolicy,
    VersionRemoved,
    VersionUpserted,
)

DOWNLOAD_TIMEOUT = 600.0

_DTYPES = {
    common_pb2.DATA_TYPE_DOUBLE: DType.DOUBLE,
    common_pb2.DATA_TYPE_INT64: DType.INT64,
    common_pb2.DATA_TYPE_BOOL: DType.BOOL,
}
_KINDS = {
    common_pb2.OUTPUT_KIND_CLASSIFIER: OutputKind.CLASSIFIER,
    common_pb2.OUTPUT_KIND_REGRESSOR: OutputKind.REGRESSOR,
    # A ranker's score is its estimator's ``predict``, as for a regressor.
    common_pb2.OUTPUT_KIND_RANKER: OutputKind.REGRESSOR,
}
_FORMATS = {
    common_pb2.ARTIFACT_FORMAT_SKOPS: "skops",
    common_pb2.ARTIFACT_FORMAT_PICKLE: "pickle",
}


class RegistrySource:
    """Implements :class:`mlbackend_serving.core.versions.VersionSource`."""

    def __init__(self, client: RegistryClient) -> None:
        self._client = client

    async def watch(self, start_revision: int) -> AsyncIterator[Change]:
        call = self._client.stub.Watch(pb.WatchRequest(start_revision=start_revision))
        try:
            async for event in call:
                change = to_change(event)
                if change is not None:
                    yield change
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                raise RevisionExpired(exc.details()) from None
            raise SourceUnavailable(f"{exc.code().name}: {exc.details()}") from None
        finally:
            call.cancel()

    async def download(self, info: VersionInfo, out: BinaryIO) -> None:
        name = f"models/{info.name}/versions/{info.version}"
        try:
            header = await self._client.download_artifact(name, out, timeout=DOWNLOAD_TIMEOUT)
        except RpcError as exc:
            raise SourceUnavailable(str(exc)) from None
        if header.artifact.sha256 != info.sha256:
            raise ArtifactIntegrityError(
                f"{name}: the registry sent sha256 {header.artifact.sha256}, "
                f"its metadata says {info.sha256}"
            )


def to_change(event: pb.WatchResponse) -> Change | None:
    """The domain change of one watch event (None for a resource serving ignores)."""
    revision = int(event.revision)
    snapshot = event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT
    if event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT_COMPLETE:
        return SnapshotComplete(revision)
    if event.type == pb.WATCH_EVENT_TYPE_HEARTBEAT:
        return Heartbeat(revision)
    parts = event.resource.split("/")
    if len(parts) < 2 or parts[0] != "models":
        return None
    model = parts[1]
    if event.type == pb.WATCH_EVENT_TYPE_DELETED:
        if len(parts) == 2:
            return ModelRemoved(revision, model)
        if len(parts) == 4 and parts[2] == "versions" and parts[3].isdigit():
            return VersionRemoved(revision, model, int(parts[3]))
        if len(parts) == 4 and parts[2] == "aliases":
            return AliasRemoved(revision, model, parts[3])
        return None
    which = event.WhichOneof("state")
    if which == "model_version":
        version = event.model_version
        info = (
            version_info(model, version)
            if version.status == pb.MODEL_VERSION_STATUS_READY
            else None
        )
        return VersionUpserted(revision, model, int(version.version), info, snapshot=snapshot)
    if which == "alias":
        alias = event.alias
        return AliasSet(revision, model, alias.alias, int(alias.version), snapshot=snapshot)
    return None


def version_info(model: str, version: pb.ModelVersion) -> VersionInfo:
    """What serving needs of a READY version; ``problem`` says why it cannot be served."""
    problems: list[str] = []
    features: list[FeatureSpec] = []
    for spec in version.signature.features:
        dtype = _DTYPES.get(spec.dtype)
        if dtype is None:
            problems.append(
                f"feature {spec.name!r} has dtype {common_pb2.DataType.Name(spec.dtype)}"
            )
            dtype = DType.DOUBLE
        features.append(FeatureSpec(spec.name, dtype, spec.nullable))
    if not features:
        problems.append("no input signature")
    kind = _KINDS.get(version.output.kind)
    if kind is None:
        problems.append("no output kind")
        kind = OutputKind.CLASSIFIER
    artifact_format = _FORMATS.get(version.artifact.format)
    if artifact_format is None:
        problems.append(
            f"artifact format {common_pb2.ArtifactFormat.Name(version.artifact.format)}"
        )
    threshold = (
        version.output.decision_threshold if version.output.HasField("decision_threshold") else None
    )
    classes = tuple(_scalar(v) for v in version.output.classes)
    try:
        output = OutputSpec(kind, classes if kind is OutputKind.CLASSIFIER else (), threshold)
    except Exception as exc:  # an inconsistent output spec makes the version unservable
        problems.append(str(exc))
        output = OutputSpec(kind)
    return VersionInfo(
        name=model,
        version=int(version.version),
        sha256=version.artifact.sha256,
        format=artifact_format or "unsupported",
        features=tuple(features),
        output=output,
        input_example=_example(version, [f.name for f in features]),
        description=version.description,
        problem="; ".join(problems),
    )


def _example(version: pb.ModelVersion, names: list[str]) -> Example:
    """The stored input rows in signature order; rows missing a value are left out."""
    rows: list[tuple[float | None, ...]] = []
    for row in version.input_example:
        values = [_number(row.values[n]) if n in row.values else None for n in names]
        if all(v is not None for v in values):
            rows.append(tuple(values))
    return tuple(rows)


def _number(value: common_pb2.Value) -> float | None:
    which = value.WhichOneof("kind")
    if which in ("double_value", "int64_value", "bool_value"):
        return float(getattr(value, which))
    return None


def _scalar(value: common_pb2.Value) -> Scalar:
    which = value.WhichOneof("kind")
    if which in ("double_value", "int64_value", "bool_value", "string_value"):
        result: Scalar = getattr(value, which)
        return result
    return None


RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)

STARTUP_SYNC_SECONDS = 60.0
"""At most this long at start for the registry's versions to load (less when it is down)."""


@dataclass
class Following:
    """Serving in registry mode: the follower and the client it uses."""

    follower: RegistryFollower
    client: RegistryClient

    async def attach(self, running: RunningServer) -> None:
        """Health says SERVING once there is something to serve (cache or registry)."""
        if not self.follower.ready.is_set():
            await running.set_serving(False)

        async def serving_when_ready() -> None:
            await self.follower.ready.wait()
            await running.set_serving(True)

        waiter = asyncio.get_running_loop().create_task(serving_when_ready())

        async def close() -> None:
            waiter.cancel()
            await self.follower.close()
            await self.client.close()

        running.on_stop(close)


async def follow_registry(settings: ServerSettings, core: ServingCore) -> Following | None:
    """Registry mode (``--registry`` without ``--model-dir``): load what the policy wants
    (from the cache first), follow the registry's changes from then on."""
    if settings.registry is None or settings.model_dir is not None:
        return None
    try:
        policy = VersionPolicy.parse(settings.serving_models)
    except ValueError as exc:
        raise ConfigError(f"serving_models: {exc}") from None
    options = ChannelOptions(
        token=settings.token.get_secret_value() if settings.token else None,
        tls=TlsOptions(ca_cert=settings.tls_ca) if settings.tls_ca else None,
        # gRPC's own reconnect backoff grows to 2 minutes: after a long outage the
        # follower would stay blind that long once the registry is back.
        extra_options=RECONNECT_OPTIONS,
    )
    client = RegistryClient.connect(settings.registry, options)
    follower = RegistryFollower(
        core,
        RegistrySource(client),
        ArtifactCache(settings.data_dir / "serving-cache"),
        policy=policy,
        load_policy=LoadPolicy(allow_pickle=settings.allow_pickle),
    )
    try:
        await follower.start(STARTUP_SYNC_SECONDS)
    except BaseException:
        await follower.close()
        await client.close()
        raise
    return Following(follower, client)
