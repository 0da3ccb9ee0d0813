"""The registry as the gateway's model catalog, and the watcher that keeps its cache exact."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import grpc

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2
from mlbackend_clients.registry import RegistryClient
from mlbackend_gateway.core.model import (
    DType,
    InputFeature,
    ModelVersionInfo,
    OutputInfo,
    OutputKind,
    RegisteredModelInfo,
    Scalar,
)
from mlbackend_gateway.core.versions import VersionResolver
from mlbackend_gateway.upstream.failures import transport_failure
from mlbackend_gateway.upstream.values import DTYPES, to_scalar
from mlbackend_runtime.errors import FailedPrecondition, InvalidInput, NotFound

logger = logging.getLogger("mlbackend.gateway.registry")

DEPENDENCY = "registry"

DEFAULT_TAG_PREFIX = "gateway.default."
"""Version tag ``gateway.default.<input>=<value>`` declares the value filled in when
that input is missing (NOT_FOUND, EXPIRED or null) in the feature store."""

_KINDS = {
    common_pb2.OUTPUT_KIND_CLASSIFIER: OutputKind.CLASSIFIER,
    common_pb2.OUTPUT_KIND_REGRESSOR: OutputKind.REGRESSOR,
    common_pb2.OUTPUT_KIND_RANKER: OutputKind.RANKER,
}


def _fail(error: grpc.aio.AioRpcError, what: str) -> Exception:
    mapped = transport_failure(DEPENDENCY, error)
    if mapped is not None:
        return mapped
    if error.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what} not found")
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput.field("model", error.details() or "invalid model name")
    return error


def output_info(spec: common_pb2.OutputSpec) -> OutputInfo:
    return OutputInfo(
        kind=_KINDS.get(spec.kind, OutputKind.UNSPECIFIED),
        classes=tuple(to_scalar(c) for c in spec.classes),
        decision_threshold=spec.decision_threshold if spec.HasField("decision_threshold") else None,
        top_k=spec.top_k,
    )


def _parse_default(raw: str, dtype: DType) -> Scalar:
    if dtype is DType.DOUBLE:
        return float(raw)
    if dtype is DType.INT64:
        return int(raw)
    if dtype is DType.BOOL:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(raw)
        return raw.lower() in ("true", "1")
    if dtype is DType.STRING:
        return raw
    raise ValueError(f"no default for {dtype.value} inputs")


def defaults_from_tags(
    tags: Mapping[str, str], signature: tuple[InputFeature, ...], where: str
) -> dict[str, Scalar]:
    by_name = {f.name: f for f in signature}
    out: dict[str, Scalar] = {}
    for key, raw in tags.items():
        if not key.startswith(DEFAULT_TAG_PREFIX):
            continue
        name = key[len(DEFAULT_TAG_PREFIX) :]
        spec = by_name.get(name)
        if spec is None:
            raise FailedPrecondition(f"{where}: tag {key!r} names no input of the signature")
        try:
            out[name] = _parse_default(raw, spec.dtype)
        except ValueError:
            raise FailedPrecondition(
                f"{where}: tag {key!r}={raw!r} is not a valid {spec.dtype.value}"
            ) from None
    return out


def version_info(version: registry_pb2.ModelVersion) -> ModelVersionInfo:
    model = version.name.split("/")[1] if version.name.startswith("models/") else version.name
    signature = tuple(
        InputFeature(f.name, DTYPES.get(f.dtype, DType.DOUBLE), f.nullable)
        for f in version.signature.features
    )
    where = f"model {model!r} version {version.version}"
    return ModelVersionInfo(
        model=model,
        version=version.version,
        signature=signature,
        output=output_info(version.output),
        feature_service=version.feature_service,
        feature_refs=tuple(version.feature_refs),
        defaults=defaults_from_tags(version.tags, signature, where),
    )


class RegistryCatalog:
    def __init__(self, client: RegistryClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def get_model(self, model: str) -> RegisteredModelInfo:
        try:
            response = await self._client.stub.GetRegisteredModel(
                registry_pb2.GetRegisteredModelRequest(name=f"models/{model}"),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise _fail(exc, f"model {model!r}") from None
        registered = response.registered_model
        return RegisteredModelInfo(model, dict(registered.aliases), registered.latest_version)

    async def get_version(self, model: str, version: int) -> ModelVersionInfo:
        try:
            response = await self._client.stub.GetModelVersion(
                registry_pb2.GetModelVersionRequest(name=f"models/{model}/versions/{version}"),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise _fail(exc, f"model {model!r} version {version}") from None
        found = response.model_version
        if found.status == registry_pb2.MODEL_VERSION_STATUS_FAILED:
            raise FailedPrecondition(f"model {model!r} version {version} failed to register")
        return version_info(found)

    async def list_models(self, page_size: int, page_token: str) -> tuple[list[str], str]:
        try:
            response = await self._client.stub.ListRegisteredModels(
                registry_pb2.ListRegisteredModelsRequest(
                    page_size=page_size, page_token=page_token
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            mapped = transport_failure(DEPENDENCY, exc)
            if mapped is not None:
                raise mapped from None
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInput.field("page_token", exc.details() or "invalid") from None
            raise
        return [m.name.removeprefix("models/") for m in response.registered_models], (
            response.next_page_token
        )


def _affected(resource: str) -> tuple[str, int | None] | None:
    """``models/M`` → (M, None); ``models/M/versions/N`` → (M, N); aliases → (M, None)."""
    parts = resource.split("/")
    if len(parts) < 2 or parts[0] != "models":
        return None
    if len(parts) >= 4 and parts[2] == "versions" and parts[3].isdigit():
        return parts[1], int(parts[3])
    return parts[1], None


class RegistryWatcher:
    """Follows the registry's watch stream; the resolver's cache is exact while it runs.

    On any break it marks the cache TTL-bound and reconnects with a fresh snapshot
    (backoff 0.2 s doubling to 5 s).
    """

    def __init__(
        self,
        client: RegistryClient,
        resolver: VersionResolver,
        on_live: Callable[[bool], None] = lambda live: None,
    ) -> None:
        self._client = client
        self._resolver = resolver
        self._on_live = on_live
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="registry-watch")

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                call = self._client.stub.Watch(registry_pb2.WatchRequest(start_revision=0))
                async for event in call:
                    self._apply(event)
                    backoff = 0.2
            except grpc.aio.AioRpcError as exc:
                logger.info("registry watch interrupted (%s); caching with a TTL", exc.code())
            self._resolver.set_live(False)
            self._on_live(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _apply(self, event: registry_pb2.WatchResponse) -> None:
        if event.type == registry_pb2.WATCH_EVENT_TYPE_SNAPSHOT_COMPLETE:
            self._resolver.set_live(True)
            self._on_live(True)
            return
        if event.type in (
            registry_pb2.WATCH_EVENT_TYPE_UPSERTED,
            registry_pb2.WATCH_EVENT_TYPE_DELETED,
        ):
            affected = _affected(event.resource)
            if affected is not None:
                self._resolver.changed(*affected)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
