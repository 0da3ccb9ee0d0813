"""The shared runtime on a real grpc.aio server: errors, deadlines, request ids, drain,
message limits — through a probe service registered like any service's servicer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from mlbackend_clients import propagation
from mlbackend_clients.channel import create_channel
from mlbackend_clients.errors import decode_error
from mlbackend_runtime import errors
from mlbackend_runtime.auth import Role
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_server

from conftest import loopback_settings

PROBE = "mlbackend.test.Probe"
_LIMIT = 64 * 1024


def _domain_error(kind: str) -> errors.DomainError:
    return {
        "invalid": errors.InvalidInput(
            "2 rows are invalid",
            [
                errors.FieldViolation("rows[0].amount", "must be finite"),
                errors.FieldViolation("rows[3].age", "must be >= 0"),
            ],
        ),
        "not_found": errors.NotFound("model 'fraud' not found"),
        "exists": errors.AlreadyExists("model 'fraud' exists"),
        "precondition": errors.FailedPrecondition("alias 'production' points here"),
        "unavailable": errors.DependencyUnavailable("feature-store"),
        "exhausted": errors.ResourceExhausted("queue full"),
        # Far more than fits in a trailer, with a caller's absurdly long key name.
        "many": errors.InvalidInput(
            "1000 rows are invalid; first: " + "k" * 20_000,
            [errors.FieldViolation(f"rows[{i}].{'k' * 300}", "not a column") for i in range(1000)],
        ),
        "missing": errors.FailedPrecondition(
            "features are missing",
            [
                errors.PreconditionViolation("FEATURE_NOT_FOUND", f"inputs[{i}]/amount", "no value")
                for i in range(1000)
            ],
        ),
    }[kind]


class Probe:
    """Behaviours a real servicer has, reduced to what the runtime must handle."""

    def __init__(self) -> None:
        self.finished = 0
        self.seen: list[dict[str, Any]] = []

    async def sleep(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(float(request.decode()))
        self.finished += 1
        return b"slept"

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        kind = request.decode()
        if kind == "bug":
            raise KeyError("a bug, not a domain error")
        raise _domain_error(kind)

    async def whoami(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        current = propagation.current()
        assert current is not None
        info = {
            "request_id": current.request_id,
            "remaining": current.time_remaining(),
            "shared_with": list(current.shared_with),
        }
        self.seen.append(info)
        return json.dumps(info).encode()

    async def count(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        for i in range(int(request.decode())):
            yield str(i).encode()
        raise errors.FailedPrecondition("stream ended by the core")

    async def forward(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Calls whoami on ``request`` (an address): a downstream hop."""
        async with create_channel(request.decode()) as channel:
            call = channel.unary_unary(f"/{PROBE}/WhoAmI")
            answer: bytes = await call(b"")
            return answer


def _register(probe: Probe) -> Any:
    handlers = {
        "Sleep": grpc.unary_unary_rpc_method_handler(probe.sleep),
        "Fail": grpc.unary_unary_rpc_method_handler(probe.fail),
        "WhoAmI": grpc.unary_unary_rpc_method_handler(probe.whoami),
        "Count": grpc.unary_stream_rpc_method_handler(probe.count),
        "Forward": grpc.unary_unary_rpc_method_handler(probe.forward),
    }

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PROBE, handlers),))

    return register


SPEC = ServiceSpec(
    name="probe",
    grpc_services=(),
    default_port=0,
    default_metrics_port=0,
    max_message_bytes=_LIMIT,
    role_overrides={
        f"/{PROBE}/{m}": Role.READER for m in ("Sleep", "Fail", "WhoAmI", "Count", "Forward")
    },
)


@pytest.fixture
async def probe_server(tmp_path: Any) -> AsyncIterator[tuple[Probe, RunningServer]]:
    probe = Probe()
    server = await start_server(
        SPEC, loopback_settings(tmp_path), _register(probe), registry=CollectorRegistry()
    )
    yield probe, server
    await server.stop(0)


@pytest.fixture
async def channel(probe_server: tuple[Probe, RunningServer]) -> AsyncIterator[grpc.aio.Channel]:
    async with create_channel(probe_server[1].address) as channel:
        yield channel


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
        ("not_found", grpc.StatusCode.NOT_FOUND),
        ("exists", grpc.StatusCode.ALREADY_EXISTS),
        ("precondition", grpc.StatusCode.FAILED_PRECONDITION),
        ("unavailable", grpc.StatusCode.UNAVAILABLE),
        ("exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("bug", grpc.StatusCode.INTERNAL),
    ],
)
async def test_domain_errors_map_to_status_codes(
    channel: grpc.aio.Channel, kind: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/Fail")(kind.encode())
    assert raised.value.code() == code
    assert raised.value.code() != grpc.StatusCode.UNKNOWN


async def test_invalid_input_carries_field_violations(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/Fail")(b"invalid")
    error = decode_error(raised.value)
    assert error.message == "2 rows are invalid"
    assert [(v.field, v.description) for v in error.violations] == [
        ("rows[0].amount", "must be finite"),
        ("rows[3].age", "must be >= 0"),
    ]
    assert error.request_id and len(error.request_id) == 32


async def test_details_that_cannot_fit_a_trailer_are_cut_not_lost(
    channel: grpc.aio.Channel,
) -> None:
    # Uncut, the client refuses the trailer and sees RESOURCE_EXHAUSTED ("received
    # metadata size exceeds hard limit") instead of the error.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/Fail")(b"many")
    error = decode_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith("1000 rows are invalid; first: kkk")
    assert error.message.endswith("…") and len(error.message.encode()) <= 512
    assert 1 <= len(error.violations) < 50
    assert error.violations[0].field == "rows[0]." + "k" * 247 + "…"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/Fail")(b"missing")
    error = decode_error(raised.value)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert [v.subject for v in error.preconditions] == [f"inputs[{i}]/amount" for i in range(50)]


async def test_unavailable_dependency_is_named(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/Fail")(b"unavailable")
    assert decode_error(raised.value).dependency == "feature-store"


async def test_a_bug_answers_internal_without_leaking_the_exception(
    channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/Fail")(b"bug")
    assert "KeyError" not in (raised.value.details() or "")
    assert "request id" in (raised.value.details() or "")


async def test_stream_error_after_items_keeps_items_and_maps_code(
    channel: grpc.aio.Channel,
) -> None:
    call = channel.unary_stream(f"/{PROBE}/Count")(b"3")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for item in call:
            received.append(item)
    assert received == [b"0", b"1", b"2"]
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_request_id_from_traceparent_is_used_and_echoed(channel: grpc.aio.Channel) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    call = channel.unary_unary(f"/{PROBE}/WhoAmI")(
        b"", metadata=(("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
    )
    answer = json.loads(await call)
    assert answer["request_id"] == trace_id
    assert ("x-request-id", trace_id) in tuple(await call.trailing_metadata())


async def test_request_id_is_generated_when_absent(channel: grpc.aio.Channel) -> None:
    first = json.loads(await channel.unary_unary(f"/{PROBE}/WhoAmI")(b""))
    second = json.loads(await channel.unary_unary(f"/{PROBE}/WhoAmI")(b""))
    assert len(first["request_id"]) == 32
    assert first["request_id"] != second["request_id"]


async def test_request_id_and_deadline_propagate_downstream(
    probe_server: tuple[Probe, RunningServer], channel: grpc.aio.Channel
) -> None:
    server = probe_server[1]
    answer = await channel.unary_unary(f"/{PROBE}/Forward")(
        server.address.encode(), metadata=(("x-request-id", "req-42"),), timeout=5
    )
    downstream = json.loads(answer)
    # The hop received the caller's id and the caller's deadline (without propagation it
    # would have none: the probe's channel declares no default); grpc rounds deadlines.
    assert downstream["request_id"] == "req-42"
    assert downstream["remaining"] is not None
    assert 0 < downstream["remaining"] < 5.1


async def test_a_shared_call_names_its_other_requests_downstream_and_in_the_log(
    probe_server: tuple[Probe, RunningServer],
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = probe_server[1]
    shared = (("x-request-id", "req-1"), ("x-shared-request-ids", "req-2, req-3,bad id"))
    answer = await channel.unary_unary(f"/{PROBE}/Forward")(
        server.address.encode(), metadata=shared, timeout=5
    )
    # The hop and the hop after it know every request the call serves (malformed ids dropped).
    assert json.loads(answer)["shared_with"] == ["req-2", "req-3"]
    with caplog.at_level(logging.INFO, logger="mlbackend.rpc"), pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary(f"/{PROBE}/Fail")(b"invalid", metadata=shared)
    assert any(
        "/Fail -> INVALID_ARGUMENT" in r.getMessage()
        and "shared with requests req-2, req-3" in r.getMessage()
        for r in caplog.records
    )


async def test_deadline_exceeded_is_reported(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/Sleep")(b"2", timeout=0.2)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_message_above_limit_is_resource_exhausted(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/WhoAmI")(b"x" * (_LIMIT + 1))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_graceful_stop_drains_in_flight_calls(
    probe_server: tuple[Probe, RunningServer], channel: grpc.aio.Channel
) -> None:
    probe, server = probe_server
    in_flight = [
        asyncio.ensure_future(channel.unary_unary(f"/{PROBE}/Sleep")(b"0.5")) for _ in range(5)
    ]
    await asyncio.sleep(0.2)  # the calls have reached the handler
    started = time.monotonic()
    await server.stop(grace=5)
    assert await asyncio.gather(*in_flight) == [b"slept"] * 5
    assert probe.finished == 5
    assert time.monotonic() - started < 5
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{PROBE}/Sleep")(b"0", timeout=1)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_cancels_calls_that_outlive_the_grace_period(
    probe_server: tuple[Probe, RunningServer], channel: grpc.aio.Channel
) -> None:
    probe, server = probe_server
    slow = asyncio.ensure_future(channel.unary_unary(f"/{PROBE}/Sleep")(b"30"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await server.stop(grace=0.3)
    assert time.monotonic() - started < 3
    with pytest.raises(grpc.aio.AioRpcError):
        await slow
    assert probe.finished == 0
