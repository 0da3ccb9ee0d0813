"""The one table from domain errors to gRPC status codes with ``google.rpc`` details."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from mlbackend_runtime import errors

_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.DependencyUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}

# Codes a downstream call may report that we relay unchanged: the caller can act on
# them (retry on UNAVAILABLE, give up on DEADLINE_EXCEEDED). Anything else from a
# dependency is our failure to handle it, reported as INTERNAL with the dependency named.
_RELAYED_UPSTREAM_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


@dataclass(frozen=True)
class WireStatus:
    """A status ready to be sent: code, message and the ``grpc-status-details-bin`` trailer."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def code_for(error: errors.DomainError) -> grpc.StatusCode:
    """The status code for a domain error (walks the class hierarchy)."""
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def from_domain_error(error: errors.DomainError) -> WireStatus:
    """Encode a domain error with its details: field violations as
    ``google.rpc.BadRequest``, unmet preconditions as ``PreconditionFailure``, the
    unavailable dependency as ``ErrorInfo``, shed load as ``RetryInfo``."""
    code = code_for(error)
    details: list[any_pb2.Any] = []
    if isinstance(error, errors.InvalidInput) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad_request))
    if isinstance(error, errors.FailedPrecondition) and error.violations:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in error.violations
            ]
        )
        details.append(_pack(failure))
    if isinstance(error, errors.DependencyUnavailable):
        details.append(
            _pack(
                error_details_pb2.ErrorInfo(
                    reason="DEPENDENCY_UNAVAILABLE",
                    domain="mlbackend",
                    metadata={"dependency": error.dependency},
                )
            )
        )
    if isinstance(error, errors.ResourceExhausted):
        details.append(_pack(error_details_pb2.RetryInfo()))
    return _encode(code, error.message, details)


def from_upstream_error(error: grpc.aio.AioRpcError, dependency: str | None) -> WireStatus:
    """Relay a failed downstream call without hiding what the caller can act on."""
    code = error.code()
    where = f"{dependency}: " if dependency else "downstream call: "
    message = where + (error.details() or code.name)
    if code in _RELAYED_UPSTREAM_CODES:
        return _encode(code, message, [])
    return _encode(grpc.StatusCode.INTERNAL, message, [])


def internal(message: str) -> WireStatus:
    """An unexpected failure of our own: never UNKNOWN, never the exception text of a bug."""
    return _encode(grpc.StatusCode.INTERNAL, message, [])


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _encode(code: grpc.StatusCode, message: str, details: list[any_pb2.Any]) -> WireStatus:
    if not details:
        return WireStatus(code, message, ())
    proto = status_pb2.Status(code=_proto_code(code), message=message, details=details)
    encoded = rpc_status.to_status(proto)
    return WireStatus(code, message, tuple(encoded.trailing_metadata))


def _proto_code(code: grpc.StatusCode) -> int:
    # grpc.StatusCode values are (number, name); the numbers are google.rpc.Code's.
    return int(code.value[0])
