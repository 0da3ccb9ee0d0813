"""Each gateway method as message in → core → message out, shared by both fronts."""

from __future__ import annotations

from mlbackend.gateway.v1 import gateway_pb2 as pb
from mlbackend_gateway.core.model import FailedInput
from mlbackend_gateway.core.service import GatewayCore
from mlbackend_gateway.transport import convert


async def predict(core: GatewayCore, request: pb.PredictRequest) -> pb.PredictResponse:
    result = await core.predict(
        request.model, convert.selector(request.version), convert.prediction_input(request.input)
    )
    response = pb.PredictResponse()
    convert.set_result(response.result, result, request.include_feature_values)
    return response


async def predict_batch(
    core: GatewayCore, request: pb.PredictBatchRequest
) -> pb.PredictBatchResponse:
    results = await core.predict_batch(
        request.model,
        convert.selector(request.version),
        [convert.prediction_input(item, f"inputs[{i}]") for i, item in enumerate(request.inputs)],
        partial=request.partial_results,
    )
    response = pb.PredictBatchResponse()
    for result in results:
        if isinstance(result, FailedInput):
            convert.set_failure(response.results.add(), result)
        else:
            convert.set_result(response.results.add(), result, request.include_feature_values)
    return response


async def create_experiment(
    core: GatewayCore, request: pb.CreateExperimentRequest, creator: str
) -> pb.CreateExperimentResponse:
    created = await core.create_experiment(
        convert.experiment(request.experiment), request.experiment_id, creator
    )
    return pb.CreateExperimentResponse(experiment=convert.experiment_message(created))


async def get_experiment(
    core: GatewayCore, request: pb.GetExperimentRequest
) -> pb.GetExperimentResponse:
    found = await core.get_experiment(request.name)
    return pb.GetExperimentResponse(experiment=convert.experiment_message(found))


async def list_experiments(
    core: GatewayCore, request: pb.ListExperimentsRequest
) -> pb.ListExperimentsResponse:
    page = await core.list_experiments(
        request.model, convert.state_filter(request.state), request.page_size, request.page_token
    )
    return pb.ListExperimentsResponse(
        experiments=[convert.experiment_message(e) for e in page.experiments],
        next_page_token=page.next_page_token,
    )


async def stop_experiment(
    core: GatewayCore, request: pb.StopExperimentRequest
) -> pb.StopExperimentResponse:
    stopped = await core.stop_experiment(request.name, request.reason)
    return pb.StopExperimentResponse(experiment=convert.experiment_message(stopped))


async def list_models(core: GatewayCore, request: pb.ListModelsRequest) -> pb.ListModelsResponse:
    models, token = await core.list_models(request.page_size, request.page_token)
    return pb.ListModelsResponse(
        models=[convert.model_message(m) for m in models], next_page_token=token
    )
