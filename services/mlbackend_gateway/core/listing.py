"""The models the gateway routes to, as ListModels shows them."""

from __future__ import annotations

from dataclasses import dataclass

from mlbackend_gateway.core.experiments import ExperimentRouter
from mlbackend_gateway.core.model import DEFAULT_ALIAS
from mlbackend_gateway.core.ports import ModelCatalog
from mlbackend_gateway.core.versions import VersionResolver
from mlbackend_runtime.errors import InvalidInput


@dataclass(frozen=True)
class RoutedModel:
    model: str
    aliases: dict[str, int]
    default_version: int
    experiment: str
    feature_service: str
    timeout_seconds: float


async def list_models(
    catalog: ModelCatalog,
    resolver: VersionResolver,
    router: ExperimentRouter,
    timeout_seconds: float,
    page_size: int,
    page_token: str,
) -> tuple[list[RoutedModel], str]:
    if page_size < 0:
        raise InvalidInput.field("page_size", "must be >= 0")
    names, token = await catalog.list_models(min(page_size or 50, 200), page_token)
    out = []
    for name in names:
        registered = await resolver.model(name)
        default = registered.aliases.get(DEFAULT_ALIAS) or registered.latest_version
        feature_service = ""
        if default:
            feature_service = (await resolver.version(name, default)).feature_service
        experiment = await router.running(name)
        out.append(
            RoutedModel(
                model=name,
                aliases=dict(registered.aliases),
                default_version=default,
                experiment=experiment.name if experiment is not None else "",
                feature_service=feature_service,
                timeout_seconds=timeout_seconds,
            )
        )
    return out, token
