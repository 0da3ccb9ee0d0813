"""The stream envelope as the server reads it by hand agrees with protobuf's reading."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mlbackend.common.v1 import common_pb2 as c
from mlbackend.features.v1 import features_pb2 as f
from mlbackend.serving.v1 import serving_pb2 as s
from mlbackend_runtime.errors import InvalidInput
from mlbackend_runtime.streamed import StreamContext, open_envelope, seal


def _read() -> f.GetOnlineFeaturesRequest:
    return f.GetOnlineFeaturesRequest(
        feature_service="fraud@2",
        entity_keys=[c.EntityKey(join_keys={"user_id": c.Value(string_value="u" * 300)})],
    )


@pytest.mark.parametrize("millis", [None, 0, 1, 1500, 86_400_000 * 3 + 7])
def test_fields_read_by_hand_are_protobufs(millis: int | None) -> None:
    message = f.StreamOnlineFeaturesRequest(
        read=_read(), request_id="req-1", shared_request_ids=["req-2", "é" * 40]
    )
    if millis is not None:
        message.timeout.FromMilliseconds(millis)
    envelope = open_envelope(message.SerializeToString())
    assert envelope.body == _read().SerializeToString()
    assert envelope.request_id == "req-1"
    assert envelope.timeout == (None if millis is None else pytest.approx(millis / 1000))
    assert envelope.shared_with == ("req-2", "é" * 40)


def test_absent_and_unknown_fields() -> None:
    assert open_envelope(b"") == (b"", "", None, ())
    message = s.StreamPredictRequest(request=s.PredictRequest(model="m"))
    # Fields this reader does not know (varint, fixed64, fixed32, bytes) are skipped.
    unknown = b"\x40\x96\x01" + b"\x29" + bytes(8) + b"\x35" + bytes(4) + b"\x3a\x02hi"
    envelope = open_envelope(message.SerializeToString() + unknown)
    assert s.PredictRequest.FromString(envelope.body).model == "m"


def test_a_response_sealed_by_hand_parses() -> None:
    body = f.GetOnlineFeaturesResponse(feature_service="x" * 200).SerializeToString()
    assert f.StreamOnlineFeaturesResponse.FromString(seal(body)).read.feature_service == "x" * 200


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05abc",  # a field longer than the message
        b"\x0a",  # a length missing
        b"\x08\x01",  # field 1 as a varint
        b"\x0b",  # a group (wire type 3)
        b"\x12\x02\xff\xfe",  # a request id that is not UTF-8
        b"\x1a\x02\x0a\x00",  # a Duration with a length-delimited field
        b"\x40" + b"\xff" * 11,  # a varint longer than ten bytes
        b"\x20\x01",  # field 4 (shared request ids) as a varint
    ],
)
def test_malformed_envelopes_are_the_callers_error(data: bytes) -> None:
    with pytest.raises(InvalidInput) as raised:
        open_envelope(data)
    assert raised.value.violations[0].field == "request"


def test_a_streams_context_keeps_only_the_latest_messages_callback() -> None:
    """``run_on`` adds a cancel hook per message; on a stream of millions of messages
    they must not pile up on the call: the call's end fires only the latest."""

    class Call:
        def __init__(self) -> None:
            self.callbacks: list[Callable[[], None]] = []

        def add_callback(self, callback: Callable[[], None]) -> bool:
            self.callbacks.append(callback)
            return True

    call = Call()
    context = StreamContext(call)  # type: ignore[arg-type]
    fired: list[int] = []
    for i in range(1000):
        assert context.add_callback(lambda i=i: fired.append(i))
    assert len(call.callbacks) == 1
    call.callbacks[0]()
    assert fired == [999]
