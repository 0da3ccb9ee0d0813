"""Failed calls to a dependency → domain errors that name it."""

from __future__ import annotations

import grpc

from mlbackend_clients import propagation
from mlbackend_runtime.errors import (
    DeadlineExceeded,
    DependencyUnavailable,
    DomainError,
    ResourceExhausted,
)


def transport_failure(dependency: str, error: grpc.aio.AioRpcError) -> DomainError | None:
    """The domain error for a failure any dependency can have, or None for the caller
    to map (NOT_FOUND, INVALID_ARGUMENT… mean different things per dependency)."""
    code = error.code()
    details = error.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        return DependencyUnavailable(dependency, f"{dependency} is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        context = propagation.current()
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining <= 0.001:
            return DeadlineExceeded(f"deadline exceeded waiting for {dependency}")
        # Our own per-dependency timeout: the dependency is too slow to count on.
        return DependencyUnavailable(dependency, f"{dependency} did not answer in time")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"{dependency} is overloaded: {details}")
    if code == grpc.StatusCode.CANCELLED:
        return DependencyUnavailable(dependency, f"call to {dependency} was cancelled")
    return None
