"""The gateway's core as one object both fronts (gRPC and JSON/HTTP) call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlbackend_gateway.core.experiments import (
    Experiment,
    ExperimentPage,
    ExperimentRouter,
    ExperimentService,
    ExperimentState,
)
from mlbackend_gateway.core.listing import RoutedModel, list_models
from mlbackend_gateway.core.model import (
    FailedInput,
    PredictionInput,
    PredictionResult,
    VersionSelector,
)
from mlbackend_gateway.core.pipeline import InferencePipeline
from mlbackend_gateway.core.ports import ModelCatalog


@dataclass
class GatewayCore:
    pipeline: InferencePipeline
    experiments: ExperimentService
    router: ExperimentRouter
    catalog: ModelCatalog
    serving_timeout: float

    async def predict(
        self, model: str, selector: VersionSelector, item: PredictionInput
    ) -> PredictionResult:
        return (await self.pipeline.predict(model, selector, [item]))[0]

    async def predict_batch(
        self,
        model: str,
        selector: VersionSelector,
        items: Sequence[PredictionInput],
        *,
        partial: bool = False,
    ) -> Sequence[PredictionResult | FailedInput]:
        if partial:
            return await self.pipeline.predict_partial(model, selector, items)
        return await self.pipeline.predict(model, selector, items, batch=True)

    async def create_experiment(
        self, experiment: Experiment, experiment_id: str, creator: str
    ) -> Experiment:
        return await self.experiments.create(experiment, experiment_id, creator)

    async def get_experiment(self, name: str) -> Experiment:
        return await self.experiments.get(name)

    async def list_experiments(
        self, model: str, state: ExperimentState | None, page_size: int, page_token: str
    ) -> ExperimentPage:
        return await self.experiments.list(model, state, page_size, page_token)

    async def stop_experiment(self, name: str, reason: str) -> Experiment:
        return await self.experiments.stop(name, reason)

    async def list_models(self, page_size: int, page_token: str) -> tuple[list[RoutedModel], str]:
        return await list_models(
            self.catalog, self.pipeline.resolver, self.router, self.serving_timeout,
            page_size, page_token,
        )  # fmt: skip
