"""A service's answers to bad requests: every one an answer or the caller's fault."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.message import Message
from mutations import mangled, perturbed

from mlbackend_clients.errors import decode_error

CALLERS_FAULT = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""Codes a caller's own bad request may get: never UNKNOWN, INTERNAL or UNAVAILABLE."""


async def sweep(
    channel: grpc.aio.Channel,
    path: str,
    response_type: Any,
    seeds: Sequence[Message],
    count: int,
    rng: random.Random,
) -> set[grpc.StatusCode]:
    """Send ``count`` bad versions of ``seeds`` to the unary method ``path``, mangled
    bytes and perturbed messages in turn; each must get an answer that parses as
    ``response_type`` or a status from :data:`CALLERS_FAULT`, an INVALID_ARGUMENT
    naming its fields (``google.rpc.BadRequest``). The codes seen."""
    call = channel.unary_unary(path)  # bytes in, bytes out
    wire = [seed.SerializeToString() for seed in seeds]
    seen: set[grpc.StatusCode] = set()
    for i in range(count):
        data = mangled(rng, wire) if i % 2 else perturbed(rng, seeds).SerializeToString()
        try:
            answer = await call(data, timeout=10)
        except grpc.aio.AioRpcError as error:
            seen.add(error.code())
            assert error.code() in CALLERS_FAULT, (path, data.hex(), error)
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert decode_error(error).violations, (path, data.hex(), error)
        else:
            seen.add(grpc.StatusCode.OK)
            response_type.FromString(answer)
    return seen


async def sweep_service(
    channel: grpc.aio.Channel,
    module: ModuleType,
    service: str,
    valid: Mapping[str, Sequence[Message]],
    count: int,
    rng: random.Random,
    *,
    every_unary: bool = False,
) -> dict[str, set[grpc.StatusCode]]:
    """:func:`sweep` for each unary method of ``service`` (generated into ``module``)
    named in ``valid``, or for every one with ``every_unary``, from its ``valid``
    requests and an empty one. The codes seen, by method."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    codes: dict[str, set[grpc.StatusCode]] = {}
    for method in descriptor.methods:
        streamed = method.client_streaming or method.server_streaming
        if streamed or not (every_unary or method.name in valid):
            continue
        seeds = [*valid.get(method.name, ()), getattr(module, method.input_type.name)()]
        path = f"/{descriptor.full_name}/{method.name}"
        answer_type = getattr(module, method.output_type.name)
        codes[method.name] = await sweep(channel, path, answer_type, seeds, count, rng)
    return codes
