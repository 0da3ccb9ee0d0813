"""Gateway messages ↔ domain types (shared by the gRPC servicer and the JSON front)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.gateway.v1 import gateway_pb2 as pb
from mlbackend_gateway.core.experiments import Experiment, ExperimentState, Variant
from mlbackend_gateway.core.listing import RoutedModel
from mlbackend_gateway.core.model import (
    FailedInput,
    FeatureAction,
    OutputInfo,
    OutputKind,
    PredictionInput,
    PredictionResult,
    VersionSelector,
)
from mlbackend_gateway.upstream.monitoring import set_prediction
from mlbackend_gateway.upstream.values import STATUS_CODES, set_value, to_scalar, to_value
from mlbackend_runtime import status
from mlbackend_runtime.errors import FieldViolation, InvalidInput
from mlbackend_runtime.received import scalar_at

_ACTIONS = {
    FeatureAction.NONE: pb.FEATURE_ACTION_NONE,
    FeatureAction.DEFAULT_FILLED: pb.FEATURE_ACTION_DEFAULT_FILLED,
    FeatureAction.NULL_PASSED: pb.FEATURE_ACTION_NULL_PASSED,
}
_KINDS = {
    OutputKind.CLASSIFIER: common_pb2.OUTPUT_KIND_CLASSIFIER,
    OutputKind.REGRESSOR: common_pb2.OUTPUT_KIND_REGRESSOR,
    OutputKind.RANKER: common_pb2.OUTPUT_KIND_RANKER,
    OutputKind.UNSPECIFIED: common_pb2.OUTPUT_KIND_UNSPECIFIED,
}
_STATES = {
    ExperimentState.RUNNING: pb.EXPERIMENT_STATE_RUNNING,
    ExperimentState.STOPPED: pb.EXPERIMENT_STATE_STOPPED,
}
_STATE_FILTER = {v: k for k, v in _STATES.items()}


def selector(message: common_pb2.VersionSelector) -> VersionSelector:
    which = message.WhichOneof("selector")
    if which == "version":
        return VersionSelector(version=message.version)
    if which == "alias":
        return VersionSelector(alias=message.alias)
    return VersionSelector()


def selector_message(value: VersionSelector) -> common_pb2.VersionSelector:
    if value.version is not None:
        return common_pb2.VersionSelector(version=value.version)
    if value.alias:
        return common_pb2.VersionSelector(alias=value.alias)
    return common_pb2.VersionSelector()


def prediction_input(message: pb.PredictionInput, path: str = "input") -> PredictionInput:
    """The input of ``message`` (``path`` names it in errors: ``input``, ``inputs[3]``).

    A timestamp that is not a valid one fails the call, in a batch too (even one asking
    for partial results): the message itself is malformed, as undecodable bytes are."""
    try:
        return PredictionInput(
            entity_key={k: to_scalar(v) for k, v in message.entity_key.join_keys.items()},
            request_features={k: to_scalar(v) for k, v in message.request_features.items()},
        )
    except ValueError:
        _check_timestamps(message.entity_key.join_keys, f"{path}.entity_key.join_keys")
        _check_timestamps(message.request_features, f"{path}.request_features")
        raise


def _check_timestamps(values: Mapping[str, common_pb2.Value], path: str) -> None:
    """Raise the error that names the invalid timestamps among ``values``, if any."""
    invalid: list[FieldViolation] = []
    for name, value in values.items():
        try:
            scalar_at(value, f"{path}.{name}")
        except InvalidInput as exc:
            invalid += exc.violations
    if invalid:
        raise InvalidInput(f"{invalid[0].field}: {invalid[0].description}", invalid)


# Messages of the output specs seen last, by the identity of their OutputInfo (which
# the scorer decodes once per version), holding it so the id is not reused: equality
# would mix up classes that compare equal across types (0 == False == 0.0).
_OUTPUT_SPECS: dict[int, tuple[OutputInfo, common_pb2.OutputSpec]] = {}
_MAX_OUTPUT_SPECS = 256


def _output_spec(info: OutputInfo) -> common_pb2.OutputSpec:
    """The message of ``info``, built once per OutputInfo; shared, so only copied."""
    cached = _OUTPUT_SPECS.get(id(info))
    if cached is not None and cached[0] is info:
        return cached[1]
    spec = common_pb2.OutputSpec(
        kind=_KINDS[info.kind], classes=[to_value(c) for c in info.classes], top_k=info.top_k
    )
    if info.decision_threshold is not None:
        spec.decision_threshold = info.decision_threshold
    if len(_OUTPUT_SPECS) >= _MAX_OUTPUT_SPECS:
        _OUTPUT_SPECS.clear()
    _OUTPUT_SPECS[id(info)] = (info, spec)
    return spec


def set_result(target: pb.PredictionResult, result: PredictionResult, with_values: bool) -> None:
    """Write ``result`` into ``target`` in place (``response.result``, ``results.add()``)."""
    target.prediction_id = result.prediction_id
    target.model = result.model
    target.version = result.version
    target.variant = result.variant
    target.experiment = result.experiment
    set_prediction(target.prediction, result.prediction)
    target.output.CopyFrom(_output_spec(result.output))
    features = target.features
    for outcome in result.features:
        message = features.add()
        message.name = outcome.name
        message.status = STATUS_CODES[outcome.status]
        message.action = _ACTIONS[outcome.action]
        if with_values:
            set_value(message.value, outcome.value)
    target.feature_service = result.feature_service


def set_failure(target: pb.PredictionResult, failed: FailedInput) -> None:
    """Write an input's error into ``target`` (a partial batch's result without a
    prediction): its status code, message and ``google.rpc`` details, as a call would."""
    target.model = failed.model
    target.variant = failed.variant
    target.experiment = failed.experiment
    target.error.code = status.code_for(failed.error).value[0]
    target.error.message = failed.error.message
    target.error.details.extend(status.details(failed.error))


def _timestamp(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _variant(message: pb.Variant) -> Variant:
    return Variant(message.name, selector(message.version), message.weight)


def _variant_message(variant: Variant) -> pb.Variant:
    return pb.Variant(
        name=variant.name, version=selector_message(variant.version), weight=variant.weight
    )


def experiment(message: pb.Experiment) -> Experiment:
    return Experiment(
        name=message.name,
        model=message.model,
        variants=tuple(_variant(v) for v in message.variants),
        shadow_variants=tuple(_variant(v) for v in message.shadow_variants),
        salt=message.salt,
        description=message.description,
    )


def experiment_message(value: Experiment) -> pb.Experiment:
    return pb.Experiment(
        name=value.name,
        model=value.model,
        variants=[_variant_message(v) for v in value.variants],
        shadow_variants=[_variant_message(v) for v in value.shadow_variants],
        salt=value.salt,
        state=_STATES[value.state],
        description=value.description,
        create_time=_timestamp(value.create_time),
        stop_time=_timestamp(value.stop_time),
        created_by=value.created_by,
        stop_reason=value.stop_reason,
    )


def state_filter(state: pb.ExperimentState.ValueType) -> ExperimentState | None:
    return _STATE_FILTER.get(state)


def model_message(model: RoutedModel) -> pb.GatewayModel:
    timeout = duration_pb2.Duration()
    timeout.FromNanoseconds(int(model.timeout_seconds * 1e9))
    return pb.GatewayModel(
        model=model.model,
        aliases=model.aliases,
        default_version=model.default_version,
        experiment=model.experiment,
        feature_service=model.feature_service,
        timeout=timeout,
    )
