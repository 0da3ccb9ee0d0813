"""A service's answers to bad requests: every one an answer or the caller's fault."""

from __future__ import annotations

import asyncio
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


async def sweep_streamed(
    channel: grpc.aio.Channel,
    path: str,
    response_type: Any,
    calls: Sequence[Sequence[Message]],
    count: int,
    rng: random.Random,
    *,
    request_streaming: bool,
    response_streaming: bool,
    also: frozenset[grpc.StatusCode] = frozenset(),
) -> set[grpc.StatusCode]:
    """:func:`sweep` for a streaming method: ``count`` calls, each one of ``calls`` (a
    valid call's request messages) with one message mangled or perturbed, and now and
    then a message dropped or sent twice; every message answered must parse as
    ``response_type``, and a call that fails must fail with a status from
    :data:`CALLERS_FAULT` or ``also``, an INVALID_ARGUMENT naming its fields. The codes
    seen."""
    if request_streaming and response_streaming:
        method: Any = channel.stream_stream(path)
    elif request_streaming:
        method = channel.stream_unary(path)
    else:
        method = channel.unary_stream(path)
    seen: set[grpc.StatusCode] = set()
    for i in range(count):
        messages = list(rng.choice(calls))
        at = rng.randrange(len(messages))
        wire = [m.SerializeToString() for m in messages]
        if i % 2:
            wire[at] = mangled(rng, [wire[at]])
        else:
            wire[at] = perturbed(rng, [messages[at]]).SerializeToString()
        if request_streaming and rng.random() < 0.2:
            edit = rng.randrange(len(wire))
            if rng.random() < 0.5:
                del wire[edit]
            else:
                wire.insert(edit, wire[edit])
        try:
            if not request_streaming:
                answers = [answer async for answer in method(wire[0], timeout=10)]
            elif response_streaming:
                answers = await _in_turn(method(timeout=10), wire)
            else:
                call = method(timeout=10)
                await _send(call, wire)
                answers = [await call]
        except grpc.aio.AioRpcError as error:
            if _write_refused(error):
                continue  # the server ended the call first; its status is not ours to see
            seen.add(error.code())
            trace = (path, [w.hex() for w in wire], error)
            assert error.code() in CALLERS_FAULT | also, trace
            # The server's answer to a message's own timeout, not this call's deadline
            # passing on a message left unanswered.
            assert error.details() != "Deadline Exceeded", trace
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert decode_error(error).violations, trace
        else:
            seen.add(grpc.StatusCode.OK)
            for answer in answers:
                response_type.FromString(answer)
    return seen


async def _in_turn(call: Any, messages: Sequence[bytes]) -> list[bytes]:
    """A bidirectional call that answers each message: each written once the one before
    was answered, so a call the server ends (refusing a message) is never written to
    after its end, and its status is the server's. An unanswered message waits out the
    call's deadline."""
    answers = []
    for message in messages:
        await call.write(message)
        answer = await call.read()
        if answer is grpc.aio.EOF:
            break
        answers.append(answer)
    else:
        await call.done_writing()
        while (answer := await call.read()) is not grpc.aio.EOF:
            answers.append(answer)
    if await call.code() != grpc.StatusCode.OK:
        await call  # raises the call's error
    return answers


async def _send(call: Any, messages: Sequence[bytes]) -> None:
    """``messages`` written on a client-streaming ``call``, then its end."""
    try:
        for message in messages:
            await call.write(message)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the server ended the call: awaiting it tells


def _write_refused(error: grpc.aio.AioRpcError) -> bool:
    """Whether ``error`` is gRPC's client failing to write to a call the server has
    ended already (the server's own status is then lost to the client)."""
    return error.details() == "Internal error from Core" and "execute_batch" in (
        error.debug_error_string() or ""
    )
