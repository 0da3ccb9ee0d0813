"""``mlbackend features …``: apply definitions from YAML, export point-in-time data.

The YAML file mirrors ``ApplyDefinitionsRequest`` (field names as in the proto) with a
few conveniences: ``dtype: STRING`` for ``DATA_TYPE_STRING``, ``nan_policy: AS_NULL``,
durations as ``90s`` / ``30m`` / ``24h`` / ``7d`` or seconds, and allowed values as
plain scalars::

    entities:
      - name: user
        join_keys: [{name: user_id, dtype: STRING}]
    feature_views:
      - name: user_stats
        entities: [user]
        ttl: 24h
        features:
          - {name: amount, dtype: DOUBLE, constraints: {min: 0, not_null: true}}
          - {name: country, dtype: STRING, constraints: {allowed_values: [DE, FR]}}
    feature_services:
      - name: fraud
        feature_refs: ["user_stats:amount"]
        transforms:
          - {output: amount_z, standard_scale: {input: "user_stats:amount", mean: 10, std: 2}}
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from mlbackend.common.v1 import common_pb2
from mlbackend.features.v1 import features_pb2 as pb
from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.features import FeatureStoreClient

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_FIELDS = {"ttl", "offline_retention"}
_ENUM_PREFIX = {"dtype": "DATA_TYPE_", "nan_policy": "NAN_POLICY_"}


def _duration(value: Any) -> str:
    match = _DURATION.match(str(value))
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 30m, 24h, 7d)")
    return f"{float(match.group(1)) * _UNIT_SECONDS[match.group(2)]:g}s"


def _scalar(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, bool):
        return {"bool_value": value}
    if isinstance(value, int):
        return {"int64_value": str(value)}
    if isinstance(value, float):
        return {"double_value": value}
    return {"string_value": str(value)}


def _normalize(node: Any) -> Any:
    if isinstance(node, list):
        return [_normalize(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DURATION_FIELDS:
            out[key] = _duration(value)
        elif key in _ENUM_PREFIX and isinstance(value, str):
            prefix = _ENUM_PREFIX[key]
            out[key] = value if value.startswith(prefix) else prefix + value.upper()
        elif key == "allowed_values":
            out[key] = [_scalar(v) for v in value]
        else:
            out[key] = _normalize(value)
    return out


def load_definitions(path: Path) -> pb.ApplyDefinitionsRequest:
    """Parse a definitions YAML file into the request ApplyDefinitions takes."""
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    request = pb.ApplyDefinitionsRequest()
    json_format.ParseDict(_normalize(document), request)
    return request


def add_parser(commands: Any) -> None:
    """Add ``features`` with its subcommands to the ``mlbackend`` parser."""
    features = commands.add_parser("features", help="feature store definitions and data")
    sub = features.add_subparsers(dest="features_command", required=True)
    apply = sub.add_parser("apply", help="apply entities, views and services from YAML")
    apply.add_argument("file", type=Path)
    apply.add_argument("--force", action="store_true", help="accept incompatible changes (admin)")
    apply.add_argument("--dry-run", action="store_true", help="report changes, store nothing")
    export = sub.add_parser("export", help="point-in-time rows for an entity CSV, as CSV")
    export.add_argument("entities", type=Path, help="CSV with join key columns and event_time")
    export.add_argument("--out", type=Path, required=True)
    group = export.add_mutually_exclusive_group(required=True)
    group.add_argument("--feature-service")
    group.add_argument("--feature-refs", help="comma-separated view:feature list")
    for parser in (apply, export):
        parser.add_argument("--target", default="127.0.0.1:50051", help="feature store address")
        parser.add_argument("--token", default=None, help="bearer token (or MLBACKEND_TOKEN)")


def run(args: argparse.Namespace) -> int:
    """Run the ``features`` subcommand named by ``args``; the exit code."""
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("MLBACKEND_TOKEN")
    async with FeatureStoreClient.connect(args.target, ChannelOptions(token=token)) as client:
        if args.features_command == "apply":
            request = load_definitions(args.file)
            request.force, request.dry_run = args.force, args.dry_run
            response = await client.stub.ApplyDefinitions(request, timeout=30)
            for change in response.changes:
                kind = pb.ChangeType.Name(change.change_type).removeprefix("CHANGE_TYPE_")
                detail = f"  ({change.detail})" if change.detail else ""
                print(f"{change.kind:16} {change.name:24} {kind:10} r{change.revision}{detail}")
            return 0
        return await _export(client, args)


def _entity_rows(path: Path) -> list[pb.EntityRow]:
    rows = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            when = record.pop("event_time")
            row = pb.EntityRow()
            row.event_time.FromJsonString(when if "T" in when else when + "T00:00:00Z")
            for name, text in record.items():
                value = (
                    common_pb2.Value(int64_value=int(text))
                    if text.lstrip("-").isdigit()
                    else common_pb2.Value(string_value=text)
                )
                row.entity_key.join_keys[name].CopyFrom(value)
            rows.append(row)
    return rows


async def _export(client: FeatureStoreClient, args: argparse.Namespace) -> int:
    request = pb.GetHistoricalFeaturesRequest(entity_rows=_entity_rows(args.entities))
    if args.feature_service:
        request.feature_service = args.feature_service
    else:
        request.feature_refs.extend(r.strip() for r in args.feature_refs.split(","))
    written = 0
    with args.out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        async for chunk in client.stub.GetHistoricalFeatures(request, timeout=3600):
            if chunk.start_row_index == 0:
                writer.writerow(["row", *(s.name for s in chunk.schema)])
            for i, row in enumerate(chunk.rows):
                writer.writerow([chunk.start_row_index + i, *(_text(v.value) for v in row.values)])
                written += 1
            print(f"\r{written}/{len(request.entity_rows)} rows", end="", file=sys.stderr)
    print(file=sys.stderr)
    return 0


def _text(value: common_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return ""
    if kind == "timestamp_value":
        return value.timestamp_value.ToJsonString()
    return str(getattr(value, kind))


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m mlbackend_cli.features_cmd``) until main.py hooks it in."""
    parser = argparse.ArgumentParser(prog="mlbackend")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
