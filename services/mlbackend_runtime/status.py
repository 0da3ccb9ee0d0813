"""The one table from domain errors to gRPC status codes with ``google.rpc`` details."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from mlbackend_clients.errors import VIOLATIONS_LISTED_IN_PART
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


MAX_REPORTED = 50
"""At most this many violations in one error's details."""
DETAIL_BUDGET_BYTES = 4096
"""At most about this much violation text in one error's details. They travel in a
trailer, and a gRPC client refuses trailers over 8 KB sometimes (the further over, the
more often) and over 16 KB always, by default: the call then fails with
RESOURCE_EXHAUSTED ("received metadata size exceeds hard limit") instead of the error,
and the caller learns nothing. With this budget and :data:`MAX_MESSAGE_BYTES` the
trailer of the largest error stays under 5.5 KB, whatever its script. The message
travels twice (in ``grpc-message``, percent-encoded, and in the details): cut at 2 KB
it took that trailer to 8.3-11.5 KB, and 23 calls in 1,000 failed that way."""
MAX_TEXT = 256
"""A longer field path, subject or description (a caller's 10 KB key name) is cut."""
MAX_MESSAGE_BYTES = 512
"""A longer status message (one naming a caller's 20 KB model name) is cut: it travels
in a header too, under the same limits. Messages written here run to ~200 bytes."""

V = TypeVar("V", errors.FieldViolation, errors.PreconditionViolation)


def reported(violations: Sequence[V]) -> list[V]:
    """The violations an error's details carry: the first ones, within
    :data:`MAX_REPORTED` and :data:`DETAIL_BUDGET_BYTES` (always the first), each text
    cut at :data:`MAX_TEXT`."""
    out: list[V] = []
    used = 0
    for violation in violations[:MAX_REPORTED]:
        texts = {f.name: _cut(getattr(violation, f.name)) for f in dataclasses.fields(violation)}
        used += sum(len(t.encode()) + 4 for t in texts.values())
        if out and used > DETAIL_BUDGET_BYTES:
            break
        out.append(dataclasses.replace(violation, **texts))
    return out


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


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
    """Encode a domain error with its :func:`details`."""
    return _encode(code_for(error), error.message, details(error))


def details(error: errors.DomainError) -> list[any_pb2.Any]:
    """A domain error's ``google.rpc`` details (gRPC trailers and the JSON front alike):
    field violations as ``BadRequest``, unmet preconditions as ``PreconditionFailure``,
    the unavailable dependency as ``ErrorInfo``, shed load as ``RetryInfo`` with its
    reason as ``ErrorInfo``, and the count of violations beyond those listed as
    ``ErrorInfo`` (:data:`VIOLATIONS_LISTED_IN_PART`)."""
    details: list[any_pb2.Any] = []
    if isinstance(error, errors.InvalidInput) and error.violations:
        listed = reported(error.violations)
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in listed
            ]
        )
        details.append(_pack(bad_request))
        if error.total > len(listed):
            # How many there are in all, for a program: the message says it for people.
            details.append(
                _pack(
                    error_details_pb2.ErrorInfo(
                        reason=VIOLATIONS_LISTED_IN_PART,
                        domain="mlbackend",
                        metadata={"violations": str(error.total)},
                    )
                )
            )
    if isinstance(error, errors.FailedPrecondition) and error.violations:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=v.type, subject=v.subject, description=v.description
                )
                for v in reported(error.violations)
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
        details.append(_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain="mlbackend")))
    return details


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
    if len(message) > MAX_MESSAGE_BYTES // 4 and len(data := message.encode()) > MAX_MESSAGE_BYTES:
        message = data[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "…"
    if not details:
        return WireStatus(code, message, ())
    proto = status_pb2.Status(code=_proto_code(code), message=message, details=details)
    encoded = rpc_status.to_status(proto)
    return WireStatus(code, message, tuple(encoded.trailing_metadata))


def _proto_code(code: grpc.StatusCode) -> int:
    # grpc.StatusCode values are (number, name); the numbers are google.rpc.Code's.
    return int(code.value[0])
