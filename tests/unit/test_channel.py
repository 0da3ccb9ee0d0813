"""Channel factory: targets, the service config built from the contract, propagation."""

from __future__ import annotations

import contextvars
import json

import pytest

from mlbackend.registry.v1 import registry_pb2
from mlbackend_clients import propagation
from mlbackend_clients.channel import (
    ChannelOptions,
    Outgoing,
    channel_arguments,
    normalize_target,
    service_config,
)

REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:50053", "127.0.0.1:50053"),
        ("dns:///serving.mlbackend:50053", "dns:///serving.mlbackend:50053"),
        ("127.0.0.1:1,127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2"),
        ("localhost:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
    ],
)
def test_targets(target: str, expected: str) -> None:
    assert normalize_target(target) == expected


def test_address_list_needs_ports() -> None:
    with pytest.raises(ValueError, match="needs host:port"):
        normalize_target("127.0.0.1,127.0.0.2:2")


def test_service_config_retries_only_idempotent_calls() -> None:
    config = service_config([REGISTRY], max_attempts=4)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (retried,) = config["methodConfig"]
    retried_names = {n["method"] for n in retried["name"]}
    assert {"GetModelVersion", "ListRegisteredModels", "SetAlias"} <= retried_names
    assert "CreateRegisteredModel" not in retried_names
    assert "DeleteModelVersion" not in retried_names
    # Streams (upload, download, watch) are not retried by gRPC after a first message.
    assert not retried_names & {"CreateModelVersion", "DownloadModelArtifact", "Watch"}
    assert retried["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    # No "timeout" here: grpcio fails calls at once when it is 1 s or less.
    assert "timeout" not in retried


def test_channel_arguments_are_valid_json_config() -> None:
    args = dict(channel_arguments([REGISTRY], ChannelOptions(keepalive_seconds=15)))
    assert json.loads(args["grpc.service_config"])["methodConfig"]
    assert args["grpc.keepalive_time_ms"] == 15_000


def test_request_id_from_metadata() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (
        propagation.request_id_from([("traceparent", f"00-{trace}-00f067aa0ba902b7-01")]) == trace
    )
    assert propagation.request_id_from([("x-request-id", "abc-1")]) == "abc-1"
    # Malformed values are not trusted: a fresh id instead.
    fresh = propagation.request_id_from([("traceparent", "garbage"), ("x-request-id", "a b")])
    assert len(fresh) == 32 and fresh != trace
    # One header carries the id: traceparent for a trace id, else x-request-id.
    headers = dict(propagation.outgoing_metadata(trace))
    assert headers.keys() == {"traceparent"} and headers["traceparent"].startswith(f"00-{trace}-")
    assert propagation.outgoing_metadata("abc-1") == [("x-request-id", "abc-1")]
    assert propagation.request_id_from(headers.items()) == trace  # what the next hop reads


def test_a_call_shared_by_several_requests_names_them() -> None:
    headers = dict(propagation.outgoing_metadata("req-1", ("req-2", "req-3")))
    assert headers["x-shared-request-ids"] == "req-2,req-3"
    assert propagation.shared_request_ids(headers.items()) == ("req-2", "req-3")
    # Only well-formed ids, at most MAX_SHARED of them, and only text values.
    many = ",".join(f"r{i}" for i in range(200))
    assert len(propagation.shared_request_ids([("x-shared-request-ids", many)])) == 64
    assert propagation.shared_request_ids([("x-shared-request-ids", "ok, a b,,x")]) == ("ok", "x")
    assert propagation.shared_request_ids([("x-shared-request-ids", b"r1")]) == ()
    assert propagation.shared_request_ids(None) == ()


def test_outgoing_calls_carry_the_ids_a_call_is_shared_with() -> None:
    def prepared() -> dict[str, str | bytes]:
        token = propagation.bind(propagation.CallContext("req-1", None, ("req-2",)))
        try:
            return dict(Outgoing().prepare("/mlbackend.serving.v1.ModelServingService/Predict")[1])
        finally:
            propagation.unbind(token)

    # A fresh context, as each RPC (or coalesced call) has its own.
    metadata = contextvars.Context().run(prepared)
    assert metadata["x-request-id"] == "req-1"
    assert metadata["x-shared-request-ids"] == "req-2"
