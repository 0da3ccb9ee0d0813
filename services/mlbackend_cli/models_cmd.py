"""``mlbackend models …``: register, inspect, promote, roll back and download model versions.

::

    mlbackend models register fraud model.skops --metric pr_auc=0.71 --tag team=risk
    mlbackend models list
    mlbackend models show fraud
    mlbackend models versions fraud
    mlbackend models promote fraud 3 --alias production --reason "beats v2 on PR-AUC"
    mlbackend models rollback fraud --alias production
    mlbackend models download fraud@production -o model.skops

Every command takes ``--registry ADDR`` (default 127.0.0.1:50052), ``--token`` (or
``MLBACKEND_TOKEN``) and ``--json``. ``register`` reads the input signature (feature
names) and the classes from a skops model, loading it with the secure loader.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2 as pb
from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.errors import RpcError
from mlbackend_clients.registry import ArtifactIntegrityError, RegistryClient

DEFAULT_REGISTRY = "127.0.0.1:50052"
_FORMATS = {
    "skops": common_pb2.ARTIFACT_FORMAT_SKOPS,
    "onnx": common_pb2.ARTIFACT_FORMAT_ONNX,
    "pickle": common_pb2.ARTIFACT_FORMAT_PICKLE,
}


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"mlbackend models: {flag} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def add_parser(commands: Any) -> None:
    """Add ``models`` with its subcommands to the ``mlbackend`` parser."""
    models = commands.add_parser("models", help="model registry: versions, aliases, artifacts")
    sub = models.add_subparsers(dest="models_command", required=True)
    register = sub.add_parser("register", help="upload a model file as a new version")
    register.add_argument("name")
    register.add_argument("file", type=Path)
    register.add_argument(
        "--format",
        choices=sorted(_FORMATS),
        default=None,
        help="artifact format (default: from the file name, else skops)",
    )
    register.add_argument("--metric", action="append", metavar="K=V", help="evaluation metric")
    register.add_argument("--tag", action="append", metavar="K=V", help="version tag")
    register.add_argument("--param", action="append", metavar="K=V", help="training parameter")
    register.add_argument("--description", default="")
    register.add_argument("--reason", default="", help="recorded in the audit log")
    register.add_argument(
        "--no-create", action="store_true", help="fail if the registered model does not exist yet"
    )
    listing = sub.add_parser("list", help="registered models")
    listing.add_argument("--prefix", default="")
    show = sub.add_parser("show", help="one registered model with its aliases")
    show.add_argument("name")
    versions = sub.add_parser("versions", help="versions of a model, newest first")
    versions.add_argument("name")
    promote = sub.add_parser("promote", help="point an alias at a version")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--alias", required=True)
    promote.add_argument("--reason", default="")
    rollback = sub.add_parser("rollback", help="move an alias back to its previous version")
    rollback.add_argument("name")
    rollback.add_argument("--alias", required=True)
    rollback.add_argument("--reason", default="")
    download = sub.add_parser("download", help="download and verify an artifact")
    download.add_argument("ref", help="NAME, NAME@VERSION or NAME@ALIAS (default: latest)")
    download.add_argument("-o", "--output", type=Path, required=True)
    for parser in (register, listing, show, versions, promote, rollback, download):
        parser.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry address")
        parser.add_argument("--token", default=None, help="bearer token (or MLBACKEND_TOKEN)")
        parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Run the ``models`` subcommand named by ``args``; the exit code."""
    try:
        return asyncio.run(_run(args))
    except RpcError as exc:
        details = "".join(f"\n  {v.field}: {v.description}" for v in exc.violations)
        print(f"mlbackend models {args.models_command}: {exc}{details}", file=sys.stderr)
        return 1
    except (ArtifactIntegrityError, OSError) as exc:
        print(f"mlbackend models {args.models_command}: {exc}", file=sys.stderr)
        return 1


def _print(args: argparse.Namespace, message: Message, text: str) -> None:
    if args.json:
        print(json_format.MessageToJson(message, preserving_proto_field_name=True))
    else:
        print(text)


def _version_line(v: pb.ModelVersion) -> str:
    stage = pb.ModelStage.Name(v.stage).removeprefix("MODEL_STAGE_")
    aliases = f"  [{', '.join(v.aliases)}]" if v.aliases else ""
    metrics = " ".join(f"{k}={m:g}" for k, m in sorted(v.metrics.items()))
    return f"{v.name}  {stage:10} {v.artifact.sha256[:12]}  {v.created_by}  {metrics}{aliases}"


async def _run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("MLBACKEND_TOKEN")
    async with RegistryClient.connect(args.registry, ChannelOptions(token=token)) as client:
        command = args.models_command
        stub = client.stub
        if command == "register":
            version = await _register(client, args)
            _print(args, version, _version_line(version))
        elif command == "list":
            models = await stub.ListRegisteredModels(
                pb.ListRegisteredModelsRequest(name_prefix=args.prefix, page_size=1000)
            )
            lines = [
                f"{m.name}  latest={m.latest_version}  "
                + " ".join(f"{a}->{n}" for a, n in sorted(m.aliases.items()))
                for m in models.registered_models
            ]
            _print(args, models, "\n".join(lines))
        elif command == "show":
            model = await stub.GetRegisteredModel(
                pb.GetRegisteredModelRequest(name=f"models/{args.name}")
            )
            m = model.registered_model
            aliases = ", ".join(f"{a} -> {n}" for a, n in sorted(m.aliases.items()))
            _print(args, model, f"{m.name}  latest={m.latest_version}  aliases: {aliases or '-'}")
        elif command == "versions":
            listed = await stub.ListModelVersions(
                pb.ListModelVersionsRequest(parent=f"models/{args.name}", page_size=1000)
            )
            _print(args, listed, "\n".join(_version_line(v) for v in listed.model_versions))
        elif command == "promote":
            alias = await stub.SetAlias(
                pb.SetAliasRequest(
                    parent=f"models/{args.name}",
                    alias=args.alias,
                    version=args.version,
                    reason=args.reason,
                )
            )
            a = alias.alias
            _print(args, alias, f"{a.name} -> {a.version} (was {a.previous_version or '-'})")
        elif command == "rollback":
            rolled = await stub.RollbackAlias(
                pb.RollbackAliasRequest(
                    name=f"models/{args.name}/aliases/{args.alias}", reason=args.reason
                )
            )
            a = rolled.alias
            _print(args, rolled, f"{a.name} -> {a.version} (was {a.previous_version})")
        else:
            name, _, ref = args.ref.partition("@")
            partial = args.output.with_name(args.output.name + ".part")
            with partial.open("wb") as out:
                header = await client.download_artifact(
                    f"models/{name}/versions/{ref or 'latest'}", out
                )
            partial.replace(args.output)  # only verified bytes get the final name
            _print(
                args,
                header,
                f"{header.model_version} -> {args.output} "
                f"({header.artifact.size_bytes} bytes, sha256 verified)",
            )
        return 0


async def _register(client: RegistryClient, args: argparse.Namespace) -> pb.ModelVersion:
    fmt = args.format or (
        "pickle"
        if args.file.suffix in {".pkl", ".pickle", ".joblib"}
        else "onnx"
        if args.file.suffix == ".onnx"
        else "skops"
    )
    spec = pb.ModelVersion(
        artifact=pb.Artifact(format=_FORMATS[fmt]),
        metrics={k: float(v) for k, v in _pairs(args.metric, "--metric").items()},
        tags=_pairs(args.tag, "--tag"),
        params=_pairs(args.param, "--param"),
        description=args.description,
    )
    if fmt == "skops":
        await asyncio.to_thread(describe_skops_model, args.file, spec)
    return await client.upload_version(
        f"models/{args.name}",
        args.file,
        spec,
        create_registered_model=not args.no_create,
        reason=args.reason,
        timeout=None,
    )


def _value(item: Any) -> common_pb2.Value:
    if isinstance(item, bool) or type(item).__name__ == "bool_":
        return common_pb2.Value(bool_value=bool(item))
    if isinstance(item, int) or type(item).__name__.startswith("int"):
        return common_pb2.Value(int64_value=int(item))
    if isinstance(item, float) or type(item).__name__.startswith("float"):
        return common_pb2.Value(double_value=float(item))
    return common_pb2.Value(string_value=str(item))


def describe_skops_model(path: Path, spec: pb.ModelVersion) -> None:
    """Fill framework, input signature and output kind/classes from a skops model.

    The model is loaded with the secure loader (trusted types only), so an unsafe file
    is refused here already, with the type named.
    """
    import sklearn  # heavy: only for `register`
    from sklearn.base import is_regressor

    from mlbackend_models import loader

    model = loader.load_artifact(
        path, expected_sha256=None, artifact_format=loader.ArtifactFormat.SKOPS
    )
    spec.framework.name, spec.framework.version = "scikit-learn", sklearn.__version__
    for name in getattr(model, "feature_names_in_", ()):
        spec.signature.features.add(name=str(name), dtype=common_pb2.DATA_TYPE_DOUBLE)
    classes = getattr(model, "classes_", None)
    if classes is not None:
        spec.output.kind = common_pb2.OUTPUT_KIND_CLASSIFIER
        spec.output.classes.extend(_value(c) for c in classes)
    elif is_regressor(model):
        spec.output.kind = common_pb2.OUTPUT_KIND_REGRESSOR
