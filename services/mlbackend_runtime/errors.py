"""Domain errors raised by service cores.

This module knows nothing about gRPC: the shared call interceptor maps each
class to a status code (``mlbackend_runtime.status``), so a core states *what*
went wrong and the transport decides how to say it on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: ``field`` is a path such as ``rows[3].amount``."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error a core raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """The request is malformed; ``violations`` names every offending field, or the
    first ones of ``total``."""

    def __init__(
        self, message: str, violations: Iterable[FieldViolation] = (), total: int | None = None
    ) -> None:
        super().__init__(message)
        self.violations = tuple(violations)
        self.total = max(total or 0, len(self.violations))
        """How many violations there are in all (``violations`` may list fewer)."""

    @classmethod
    def field(cls, field: str, description: str) -> InvalidInput:
        """An error about a single field, its description doubling as the message."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class NotFound(DomainError):
    """The named resource does not exist."""


class AlreadyExists(DomainError):
    """A resource with that name exists already."""


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (``google.rpc.PreconditionFailure.Violation``): ``type`` a
    stable code such as ``FEATURE_NOT_FOUND``, ``subject`` what it is about."""

    type: str
    subject: str
    description: str


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the operation (e.g. an alias still points
    here); ``violations``, when given, name each unmet precondition."""

    def __init__(self, message: str, violations: Iterable[PreconditionViolation] = ()) -> None:
        super().__init__(message)
        self.violations = tuple(violations)


class Aborted(DomainError):
    """A concurrent change won (optimistic concurrency); the caller may retry the whole step."""


class DependencyUnavailable(DomainError):
    """A service or store this one needs did not answer; ``dependency`` names it."""

    def __init__(self, dependency: str, message: str | None = None) -> None:
        super().__init__(message or f"dependency {dependency!r} is unavailable")
        self.dependency = dependency


# ``google.rpc.ErrorInfo`` reasons of RESOURCE_EXHAUSTED (the wire values, which
# ``mlbackend_clients.errors`` reads).
OVERLOADED = "OVERLOADED"
STREAM_LIMIT = "STREAM_LIMIT"


class ResourceExhausted(DomainError):
    """Load is being shed (queue full, quota reached); retry later. ``reason`` (sent as
    ``ErrorInfo``) tells a refused request (``OVERLOADED``) from a refused stream
    (``STREAM_LIMIT``: the server keeps no more streams open; calls are welcome)."""

    def __init__(self, message: str, *, reason: str = OVERLOADED) -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineExceeded(DomainError):
    """The caller's deadline passed before the work could finish."""


class Unauthenticated(DomainError):
    """No valid credentials were presented."""


class PermissionDenied(DomainError):
    """The caller is known but its role does not allow the operation."""


class Unimplemented(DomainError):
    """The operation exists in the contract but this server does not provide it (yet)."""
