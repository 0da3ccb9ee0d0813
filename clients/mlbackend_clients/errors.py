"""Decoding of failed calls (and of a partial batch's failed inputs): status code,
message, field violations, unmet preconditions, dependency."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mlbackend.gateway.v1.gateway_pb2 import InputError

# ``google.rpc.ErrorInfo`` reasons of RESOURCE_EXHAUSTED, as the servers send them
# (``mlbackend_runtime.errors``): the request was shed, or a stream was refused.
OVERLOADED = "OVERLOADED"
STREAM_LIMIT = "STREAM_LIMIT"
# ``google.rpc.ErrorInfo`` reason of an INVALID_ARGUMENT that lists only its first field
# violations; its ``violations`` metadata counts them all.
VIOLATIONS_LISTED_IN_PART = "VIOLATIONS_LISTED_IN_PART"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    type: str
    subject: str
    description: str


class RpcError(Exception):
    """A failed call, with the ``google.rpc`` details the server attached."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        violations: tuple[FieldViolation, ...] = (),
        dependency: str | None = None,
        request_id: str | None = None,
        preconditions: tuple[PreconditionViolation, ...] = (),
        reason: str | None = None,
        total_violations: int | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = violations
        self.dependency = dependency
        self.request_id = request_id
        self.preconditions = preconditions
        """Unmet preconditions of a FAILED_PRECONDITION (``google.rpc.PreconditionFailure``)."""
        self.reason = reason
        """``google.rpc.ErrorInfo``'s reason: ``DEPENDENCY_UNAVAILABLE``; for
        RESOURCE_EXHAUSTED ``OVERLOADED`` (the request was shed) or ``STREAM_LIMIT`` (a
        stream was refused; unary calls are welcome)."""
        self.total_violations = (
            total_violations if total_violations is not None else len(violations)
        )
        """How many field violations there are in all: ``violations`` lists the first
        ones when the server said there were more (``VIOLATIONS_LISTED_IN_PART``)."""


def decode_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> RpcError:
    """Turn a failed call into an :class:`RpcError` with its details decoded."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    trailing = tuple(error.trailing_metadata() or ())
    status = rpc_status.from_call(error) if trailing else None
    request_id = next((str(v) for k, v in trailing if k == "x-request-id"), None)
    return _decoded(code, message, status.details if status is not None else (), request_id)


def decode_input_error(error: InputError) -> RpcError:
    """One input's error in a ``PredictBatch`` answer asked with ``partial_results``
    (``result.error``), decoded as the failed call it stands for."""
    code = next((c for c in grpc.StatusCode if c.value[0] == error.code), grpc.StatusCode.UNKNOWN)
    return _decoded(code, error.message, error.details, None)


def _decoded(
    code: grpc.StatusCode, message: str, details: Iterable[any_pb2.Any], request_id: str | None
) -> RpcError:
    violations: list[FieldViolation] = []
    preconditions: list[PreconditionViolation] = []
    dependency: str | None = None
    reason: str | None = None
    total_violations: int | None = None
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            preconditions.extend(
                PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations
            )
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason == VIOLATIONS_LISTED_IN_PART:
                total = info.metadata.get("violations", "")
                total_violations = int(total) if total.isdigit() else None
                continue
            dependency = info.metadata.get("dependency", dependency)
            reason = info.reason or reason
    return RpcError(
        code,
        message,
        tuple(violations),
        dependency,
        request_id,
        tuple(preconditions),
        reason,
        total_violations,
    )
