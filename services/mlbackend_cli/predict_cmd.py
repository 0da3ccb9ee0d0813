"""``mlbackend predict``: one prediction through the gateway.

::

    mlbackend predict fraud --entity user_id=u1 --feature amount=120.5 --feature mcc=5411
    mlbackend predict fraud --entity user_id=u1 --feature amount=120.5 --version 3 --json
    mlbackend predict fraud --entity account:int=42 --feature country:str=044 --alias challenger
    mlbackend predict fraud_detection --entity user_id=u000042 --entity merchant_id=m00007 \
        --feature amount=120.5 --feature event_time=2026-12-07T10:00:00Z --feature far_from_home=0

Values are typed by their text: numbers become doubles for features and integers for
entity keys, ``true``/``false`` booleans, an RFC 3339 date and time with its offset
(``2026-12-07T10:00:00Z``, ``…+01:00``) a timestamp, anything else a string;
``NAME:TYPE=VALUE`` (TYPE one of str, int, double, bool, timestamp) says it explicitly,
and ``NAME:timestamp=now`` is the current time. Takes ``--gateway ADDR``
(default 127.0.0.1:50050), ``--token`` (or ``MLBACKEND_TOKEN``), ``--timeout`` and ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2

from mlbackend.common.v1 import common_pb2
from mlbackend.gateway.v1 import gateway_pb2 as pb
from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.errors import RpcError, decode_error
from mlbackend_clients.gateway import GatewayClient

DEFAULT_GATEWAY = "127.0.0.1:50050"
_TYPES = ("str", "int", "double", "bool", "timestamp")
# What an untyped value must look like to be read as a timestamp: a date and a time.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


class UsageError(ValueError):
    """A flag value that cannot be parsed; the message says which."""


def parse_value(text: str, kind: str | None, numbers_as: str) -> common_pb2.Value:
    """The typed value of ``text``; ``kind`` forces a type, else it is inferred."""
    if kind is None:
        lowered = text.lower()
        if lowered in ("true", "false"):
            kind = "bool"
        elif _DATE_TIME.match(text) and _timestamp(text) is not None:
            kind = "timestamp"
        else:
            try:
                float(text)
                kind = "int" if numbers_as == "int" and text.lstrip("+-").isdigit() else "double"
            except ValueError:
                kind = "str"
    try:
        if kind == "str":
            return common_pb2.Value(string_value=text)
        if kind == "int":
            return common_pb2.Value(int64_value=int(text))
        if kind == "double":
            return common_pb2.Value(double_value=float(text))
        if kind == "bool" and text.lower() in ("true", "false", "1", "0"):
            return common_pb2.Value(bool_value=text.lower() in ("true", "1"))
        if kind == "timestamp" and (when := _timestamp(text)) is not None:
            return common_pb2.Value(timestamp_value=when)
    except ValueError:
        pass
    if kind == "timestamp":
        raise UsageError(
            f"{text!r} is not a valid timestamp: give an RFC 3339 date and time with its "
            "offset, e.g. 2026-12-07T10:00:00Z, or now"
        )
    raise UsageError(f"{text!r} is not a valid {kind}")


def _timestamp(text: str) -> timestamp_pb2.Timestamp | None:
    """``text`` as a timestamp: RFC 3339 with an offset (what the JSON mapping takes), or
    ``now``; None when it is neither."""
    when = timestamp_pb2.Timestamp()
    if text == "now":
        when.GetCurrentTime()
        return when
    try:
        when.FromJsonString(text)
    except ValueError:
        return None
    return when


def parse_pairs(items: Sequence[str] | None, flag: str, numbers_as: str) -> dict[str, Any]:
    out: dict[str, common_pb2.Value] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} expects NAME=VALUE or NAME:TYPE=VALUE, got {item!r}")
        kind: str | None = None
        if ":" in name:
            name, _, kind = name.rpartition(":")
            if kind not in _TYPES:
                raise UsageError(f"{flag} {item!r}: TYPE must be one of {', '.join(_TYPES)}")
        out[name] = parse_value(text, kind, numbers_as)
    return out


def add_parser(commands: Any) -> None:
    """Add ``predict`` to the ``mlbackend`` parser."""
    predict = commands.add_parser("predict", help="one prediction through the gateway")
    predict.add_argument("model", help="registered model id, e.g. fraud")
    predict.add_argument("--entity", action="append", metavar="KEY=VALUE",
                         help="entity join key (repeatable)")  # fmt: skip
    predict.add_argument("--feature", action="append", metavar="NAME=VALUE",
                         help="request-time feature (repeatable)")  # fmt: skip
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="explicit version (bypasses experiments)")
    which.add_argument("--alias", help="alias, e.g. challenger (bypasses experiments)")
    predict.add_argument("--gateway", default=DEFAULT_GATEWAY, help="gateway address")
    predict.add_argument("--token", help="bearer token (default: MLBACKEND_TOKEN)")
    predict.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    predict.add_argument("--json", action="store_true", help="print the response as JSON")


def build_request(args: argparse.Namespace) -> pb.PredictRequest:
    request = pb.PredictRequest(
        model=args.model,
        input=pb.PredictionInput(
            entity_key=common_pb2.EntityKey(
                join_keys=parse_pairs(args.entity, "--entity", numbers_as="int")
            ),
            request_features=parse_pairs(args.feature, "--feature", numbers_as="double"),
        ),
        include_feature_values=True,
    )
    if args.version is not None:
        request.version.version = args.version
    elif args.alias:
        request.version.alias = args.alias
    return request


def _scalar(value: common_pb2.Value) -> object:
    kind = value.WhichOneof("kind")
    return None if kind in (None, "null_value") else getattr(value, kind)


def render(result: pb.PredictionResult) -> str:
    prediction = result.prediction
    variant = f"  variant {result.variant} ({result.experiment})" if result.variant else ""
    lines = [f"{result.model} version {result.version}{variant}"]
    if prediction.HasField("label"):
        lines.append(f"  label        {_scalar(prediction.label)}")
    if prediction.HasField("value"):
        lines.append(f"  value        {prediction.value:g}")
    if prediction.probabilities:
        classes = [_scalar(c) for c in result.output.classes] or list(
            range(len(prediction.probabilities))
        )
        pairs = ", ".join(
            f"{c}: {p:.4f}" for c, p in zip(classes, prediction.probabilities, strict=False)
        )
        lines.append(f"  probability  {pairs}")
    if prediction.HasField("confidence"):
        lines.append(f"  confidence   {prediction.confidence:.4f}")
    lines.append(f"  prediction   {result.prediction_id}")
    for outcome in result.features:
        status = common_pb2.FeatureStatus.Name(outcome.status).removeprefix("FEATURE_STATUS_")
        action = pb.FeatureAction.Name(outcome.action).removeprefix("FEATURE_ACTION_")
        note = "" if action == "NONE" else f"  ({action.lower()})"
        lines.append(f"    {outcome.name} = {_scalar(outcome.value)}  [{status.lower()}]{note}")
    return "\n".join(lines)


async def _predict(args: argparse.Namespace, request: pb.PredictRequest) -> pb.PredictResponse:
    token = args.token or os.environ.get("MLBACKEND_TOKEN")
    async with GatewayClient.connect(args.gateway, ChannelOptions(token=token)) as client:
        try:
            response: pb.PredictResponse = await client.stub.Predict(request, timeout=args.timeout)
        except grpc.aio.AioRpcError as exc:
            raise decode_error(exc) from None
        return response


def run(args: argparse.Namespace) -> int:
    """Run ``mlbackend predict``; the exit code (0 ok, 1 failed call, 2 bad flags)."""
    try:
        request = build_request(args)
    except UsageError as exc:
        print(f"mlbackend predict: {exc}", file=sys.stderr)
        return 2
    try:
        response = asyncio.run(_predict(args, request))
    except RpcError as exc:
        details = "".join(f"\n  {v.field}: {v.description}" for v in exc.violations)
        details += "".join(f"\n  {v.subject}: {v.description}" for v in exc.preconditions)
        dependency = f"\n  dependency: {exc.dependency}" if exc.dependency else ""
        print(f"mlbackend predict: {exc}{details}{dependency}", file=sys.stderr)
        return 1
    if args.json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
    else:
        print(render(response.result))
    return 0
