"""Whose fault a value serving refuses is: the caller's when the caller sent it."""

from __future__ import annotations

import math

from mlbackend_gateway.core.features import AssembledRow, caller_error
from mlbackend_gateway.core.model import (
    FeatureAction,
    FeatureOutcome,
    FeatureStatus,
    PredictionInput,
    Scalar,
)
from mlbackend_gateway.core.ports import RefusedValue, ScoringRefused
from mlbackend_runtime.errors import InvalidInput


def _row(**outcomes: tuple[FeatureStatus, Scalar]) -> AssembledRow:
    return AssembledRow(
        tuple(value for _, value in outcomes.values()),
        tuple(
            FeatureOutcome(name, status, FeatureAction.NONE, value)
            for name, (status, value) in outcomes.items()
        ),
    )


def _path(i: int) -> str:
    return f"inputs[{i}]"


ROWS = [
    _row(amount=(FeatureStatus.REQUEST_INPUT, 5.0), z=(FeatureStatus.COMPUTED, 0.1)),
    _row(amount=(FeatureStatus.REQUEST_INPUT, math.inf), z=(FeatureStatus.COMPUTED, math.inf)),
    _row(amount=(FeatureStatus.REQUEST_INPUT, 1.0), z=(FeatureStatus.COMPUTED, math.nan)),
]
INPUTS = [
    PredictionInput({"user_id": "u1"}, {"amount": 5.0}),
    PredictionInput({"user_id": "u2"}, {"amount": math.inf, "note": "x"}),
    PredictionInput({"user_id": "u3"}, {"amount": 1.0}),
]


def _refusal(*refused: tuple[int, str]) -> ScoringRefused:
    return ScoringRefused("refused", [RefusedValue(i, name, "not allowed") for i, name in refused])


def test_a_value_the_caller_sent_names_its_request_feature() -> None:
    error = caller_error(_refusal((1, "amount"), (1, "z")), INPUTS, ROWS, _path)
    assert isinstance(error, InvalidInput)
    assert [(v.field, v.description) for v in error.violations] == [
        ("inputs[1].request_features.amount", "not allowed")
    ]
    assert error.args[0].startswith("1 request feature value(s) the model does not take; first")


def test_a_computed_value_names_the_callers_non_finite_inputs_that_fed_it() -> None:
    error = caller_error(_refusal((1, "z")), INPUTS, ROWS, _path)
    assert isinstance(error, InvalidInput)
    ((field, description),) = [(v.field, v.description) for v in error.violations]
    assert field == "inputs[1].request_features.amount"
    assert description == (
        "inf is not allowed: the model's input z, computed from it, was refused (not allowed)"
    )


def test_a_refusal_the_request_does_not_explain_stays_a_failed_precondition() -> None:
    refusal = _refusal((2, "z"), (7, "z"))  # a stored NaN fed z; row 7 is not in the call
    assert caller_error(refusal, INPUTS, ROWS, _path) is refusal
