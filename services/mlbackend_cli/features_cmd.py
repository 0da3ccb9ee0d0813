"""``mlbackend features …``: apply definitions from YAML or a Python module, export
point-in-time data as Parquet or CSV, materialize offline history into the online store.

Definitions come from a YAML file, or from Python: ``defs.py`` (every definition built
at the module's top level with ``mlbackend_clients.feature_definitions``), ``defs.py:name``
or ``package.module:name`` (one definition, a list of them, or a function returning
them). Both become the same ``ApplyDefinitionsRequest``.

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
        request_inputs: [{name: tx_amount, dtype: DOUBLE, constraints: {min: 0}}]
        transforms:
          - {output: amount_z, standard_scale: {input: "user_stats:amount", mean: 10, std: 2}}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import grpc
import yaml
from google.protobuf import json_format, timestamp_pb2
from tqdm import tqdm

from mlbackend.common.v1 import common_pb2
from mlbackend.features.v1 import features_pb2 as pb
from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.errors import decode_error
from mlbackend_clients.feature_definitions import apply_request, definitions_in, parse_duration
from mlbackend_clients.features import FeatureStoreClient, arrow_stream

_DURATION_FIELDS = {"ttl", "offline_retention"}
_ENUM_PREFIX = {"dtype": "DATA_TYPE_", "nan_policy": "NAN_POLICY_"}


def _duration(value: Any) -> str:
    return str(parse_duration(value).ToJsonString())


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


def load_definitions(source: str | Path) -> pb.ApplyDefinitionsRequest:
    """The request ApplyDefinitions takes, from a YAML file or Python definitions
    (``defs.py``, ``defs.py:name``, ``package.module:name``)."""
    text = str(source)
    if text.endswith(".py") or (":" in text and not Path(text).exists()):
        return load_python_definitions(text)
    return load_yaml_definitions(Path(text))


def load_python_definitions(spec: str) -> pb.ApplyDefinitionsRequest:
    """Import the user's module (this runs its code) and collect its definitions."""
    target, _, attribute = spec.partition(":")
    if target.endswith(".py"):
        path = Path(target).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {target}")
        module_spec = importlib.util.spec_from_file_location(f"_mlbackend_defs_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        with _on_sys_path(path.parent):  # so the file can import its neighbours
            module_spec.loader.exec_module(module)
    else:
        with _on_sys_path(Path.cwd()):
            module = importlib.import_module(target)
    if attribute:
        if not hasattr(module, attribute):
            raise ValueError(f"{target} has no attribute {attribute!r}")
        value = getattr(module, attribute)
        values = [value() if callable(value) and not isinstance(value, type) else value]
    else:
        values = list(vars(module).values())
    found = definitions_in(values)
    if not found:
        raise ValueError(f"{spec}: no Entity, FeatureView or FeatureService found")
    return apply_request(found)


@contextlib.contextmanager
def _on_sys_path(directory: Path) -> Iterator[None]:
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path.remove(str(directory))


def load_yaml_definitions(path: Path) -> pb.ApplyDefinitionsRequest:
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
    apply = sub.add_parser(
        "apply",
        help="apply entities, views and services from YAML or a Python module",
        description="Apply definitions from a YAML file, or from Python: FILE.py, FILE.py:NAME "
        "or package.module:NAME built with mlbackend_clients.feature_definitions. A Python "
        "source is imported, which EXECUTES its code: apply only files you trust.",
    )
    apply.add_argument("file", help="defs.yaml, defs.py, defs.py:NAME or package.module:NAME")
    apply.add_argument("--force", action="store_true", help="accept incompatible changes (admin)")
    apply.add_argument("--dry-run", action="store_true", help="report changes, store nothing")
    export = sub.add_parser(
        "export", help="point-in-time rows for an entity CSV, as Parquet or CSV"
    )
    export.add_argument("entities", type=Path, help="CSV with join key columns and event_time")
    export.add_argument(
        "--output", "--out", dest="out", type=Path, required=True,
        help="file to write; FILE.parquet is Parquet, anything else CSV unless --format",
    )  # fmt: skip
    export.add_argument(
        "--format", choices=("parquet", "csv"), default=None,
        help="output format (default: from the --output extension)",
    )  # fmt: skip
    group = export.add_mutually_exclusive_group(required=True)
    group.add_argument("--feature-service")
    group.add_argument("--feature-refs", help="comma-separated view:feature list")
    materialize = sub.add_parser(
        "materialize",
        help="copy the newest offline value per entity into the online store, with progress",
        description="Incremental by default: each view continues from where its last run "
        "ended, up to now. --start/--end (ISO 8601, e.g. 2026-11-01T00:00:00Z) give an "
        "explicit event-time range.",
    )
    materialize.add_argument("views", nargs="*", help="feature views (default: every online view)")
    materialize.add_argument("--start", type=_timestamp, help="event-time range start")
    materialize.add_argument("--end", type=_timestamp, help="event-time range end (default now)")
    for parser in (apply, export, materialize):
        parser.add_argument("--target", default="127.0.0.1:50051", help="feature store address")
        parser.add_argument("--token", default=None, help="bearer token (or MLBACKEND_TOKEN)")


def _timestamp(text: str) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    try:
        stamp.FromJsonString(text if "T" in text else text + "T00:00:00Z")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time such as 2026-11-01T00:00:00Z"
        ) from None
    return stamp


def run(args: argparse.Namespace) -> int:
    """Run the ``features`` subcommand named by ``args``; the exit code."""
    try:
        return asyncio.run(_run(args))
    except grpc.aio.AioRpcError as raw:
        exc = decode_error(raw)
        details = "".join(f"\n  {v.field}: {v.description}" for v in exc.violations)
        print(f"mlbackend features {args.features_command}: {exc}{details}", file=sys.stderr)
        return 1


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
        if args.features_command == "materialize":
            return await _materialize(client, args)
        return await _export(client, args)


async def _materialize(client: FeatureStoreClient, args: argparse.Namespace) -> int:
    request = pb.MaterializeRequest(feature_views=args.views)
    if args.start is not None:
        request.start_time.CopyFrom(args.start)
    if args.end is not None:
        request.end_time.CopyFrom(args.end)
    bars: dict[str, tqdm[Any]] = {}
    try:
        async for progress in client.stub.Materialize(request, timeout=3600):
            if progress.feature_view not in bars:
                bars[progress.feature_view] = tqdm(
                    total=progress.rows_total, desc=progress.feature_view, unit="entity"
                )
            bar = bars[progress.feature_view]
            bar.update(progress.rows_done - bar.n)
            if progress.done:
                bar.close()
                until = progress.materialized_until.ToJsonString()
                print(f"{progress.feature_view}: {progress.rows_done} entities copied, "
                      f"materialized until {until}", file=sys.stderr)  # fmt: skip
    finally:
        for bar in bars.values():
            bar.close()
    return 0


def _entity_table(path: Path) -> Any:
    """The entity CSV as an Arrow table: ``event_time`` (RFC 3339, or a date meaning
    midnight UTC) becomes ``event_timestamp``; a column of whole numbers is an int64 join
    key, any other column a string."""
    import pyarrow as pa  # imported here: only the export needs it

    times: list[int] = []
    columns: dict[str, list[str]] = {}
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            when = record.pop("event_time")
            stamp = timestamp_pb2.Timestamp()
            stamp.FromJsonString(when if "T" in when else when + "T00:00:00Z")
            times.append(stamp.ToMicroseconds())
            for name, text in record.items():
                columns.setdefault(name, []).append(text)
    arrays: dict[str, Any] = {
        name: pa.array([int(t) for t in texts], pa.int64())
        if all(t.lstrip("-").isdigit() for t in texts)
        else pa.array(texts, pa.string())
        for name, texts in columns.items()
    }
    arrays["event_timestamp"] = pa.array(times, pa.timestamp("us", tz="UTC"))
    return pa.table(arrays)


async def _export(client: FeatureStoreClient, args: argparse.Namespace) -> int:
    entities = _entity_table(args.entities)
    request = pb.GetHistoricalFeaturesRequest(
        entity_table=arrow_stream(entities), result_format=pb.RESULT_FORMAT_ARROW
    )
    if args.feature_service:
        request.feature_service = args.feature_service
    else:
        request.feature_refs.extend(r.strip() for r in args.feature_refs.split(","))
    parquet = (args.format or _format_of(args.out)) == "parquet"
    sink: _Sink = _ParquetSink(args.out) if parquet else _CsvSink(args.out)
    written = 0
    try:
        async for chunk in client.stub.GetHistoricalFeatures(request, timeout=3600):
            if chunk.start_row_index == 0:
                sink.start(chunk.schema)
            batch = _record_batch(chunk.arrow)
            sink.write(chunk.start_row_index, batch)
            written = chunk.start_row_index + batch.num_rows
            print(f"\r{written}/{entities.num_rows} rows", end="", file=sys.stderr)
    finally:
        sink.close()
    print(file=sys.stderr)
    return 0


def _record_batch(data: bytes) -> Any:
    import pyarrow as pa

    with pa.ipc.open_stream(data) as reader:
        return reader.read_next_batch()


def _format_of(path: Path) -> str:
    return "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"


class _Sink(Protocol):
    def start(self, schema: Sequence[common_pb2.FeatureSpec]) -> None: ...
    def write(self, start: int, batch: Any) -> None: ...
    def close(self) -> None: ...


class _CsvSink:
    """A ``row`` column, then the schema's columns; nulls as empty cells."""

    def __init__(self, path: Path) -> None:
        self._handle = path.open("w", newline="")
        self._writer = csv.writer(self._handle)
        self._names: list[str] = []

    def start(self, schema: Sequence[common_pb2.FeatureSpec]) -> None:
        self._names = [s.name for s in schema]
        self._writer.writerow(["row", *self._names])

    def write(self, start: int, batch: Any) -> None:
        columns = [batch.column(name).to_pylist() for name in self._names]
        for i, values in enumerate(zip(*columns, strict=True)):
            self._writer.writerow([start + i, *map(_text, values)])

    def close(self) -> None:
        self._handle.close()


class _ParquetSink:
    """The CSV's columns, typed: int64, double, string, bool, timestamp[us, UTC]; nulls
    stay nulls. Written one row group per chunk, so memory stays bounded."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa  # imported here: only the export needs it

        self._pa = pa
        self._path = path
        self._names: list[str] = []
        self._schema: Any = None
        self._writer: Any = None

    def start(self, schema: Sequence[common_pb2.FeatureSpec]) -> None:
        import pyarrow.parquet as pq

        pa = self._pa
        types = {
            common_pb2.DATA_TYPE_INT64: pa.int64(),
            common_pb2.DATA_TYPE_DOUBLE: pa.float64(),
            common_pb2.DATA_TYPE_STRING: pa.string(),
            common_pb2.DATA_TYPE_BOOL: pa.bool_(),
            common_pb2.DATA_TYPE_TIMESTAMP: pa.timestamp("us", tz="UTC"),
        }
        self._names = [s.name for s in schema]
        fields = [pa.field("row", pa.int64(), nullable=False)]
        fields += [pa.field(s.name, types.get(s.dtype, pa.string())) for s in schema]
        self._schema = pa.schema(fields)
        self._writer = pq.ParquetWriter(self._path, self._schema)

    def write(self, start: int, batch: Any) -> None:
        pa = self._pa
        rows = pa.array(range(start, start + batch.num_rows), pa.int64())
        columns = [rows, *(batch.column(name) for name in self._names)]
        self._writer.write_table(pa.Table.from_arrays(columns, schema=self._schema))

    def close(self) -> None:
        if self._writer is None:  # no rows asked for: an empty file with the row column
            self.start([])
        self._writer.close()


def _text(value: Any) -> str:
    """A value as the CSV writes it: timestamps in RFC 3339, null as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(value)
        return stamp.ToJsonString()
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (``python -m mlbackend_cli.features_cmd``) until main.py hooks it in."""
    parser = argparse.ArgumentParser(prog="mlbackend")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
