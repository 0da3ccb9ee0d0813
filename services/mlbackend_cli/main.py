"""``mlbackend``: run one service, the whole suite, or the demo."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlbackend_cli import catalog, features_cmd, models_cmd, predict_cmd, train_cmd
from mlbackend_runtime.server import RunningServer

# Flags of `serve` that map one-to-one onto ServerSettings fields (and MLBACKEND_* vars).
_SERVER_FLAGS: tuple[tuple[str, type | None, str], ...] = (
    ("host", str, "address to bind (default 127.0.0.1)"),
    ("port", int, "gRPC port (default: the service's; 0 = ephemeral)"),
    ("metrics-port", int, "HTTP /metrics port (default: the service's)"),
    ("health-port", int, "extra plaintext port serving only grpc.health.v1"),
    ("data-dir", Path, "where embedded stores keep their files (default ./data)"),
    ("token-file", Path, "bearer tokens with roles; without it auth is off (loopback only)"),
    ("tls-cert", Path, "PEM server certificate"),
    ("tls-key", Path, "PEM private key"),
    ("tls-client-ca", Path, "PEM CA bundle: require client certificates (mTLS)"),
    ("insecure", None, "allow a non-loopback bind without TLS and auth"),
    ("metrics-open", None, "with tokens on, serve /metrics without one (default: any role)"),
    ("grace-seconds", float, "drain time for in-flight calls on SIGTERM (default 20)"),
    ("max-message-bytes", int, "largest message accepted or sent"),
    ("max-concurrent-rpcs", int, "calls in progress before RESOURCE_EXHAUSTED (default 1024)"),
    ("database-url", str, "PostgreSQL URL for metadata (default: SQLite under --data-dir)"),
    ("allow-pickle", None, "accept pickle/joblib model artifacts (they can run arbitrary code)"),
    ("log-format", str, "text or json"),
    ("log-level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("registry", str, "registry target for outgoing calls"),
    ("features", str, "feature store target"),
    ("serving", str, "serving target"),
    ("monitoring", str, "monitoring target"),
    ("token", str, "bearer token for outgoing calls (or MLBACKEND_TOKEN)"),
    ("tls-ca", Path, "PEM CA bundle to verify dependencies' TLS"),
    ("online-store", str, "feature store online engine: sqlite (default) or redis"),
    ("redis-url", str, "Redis URL for the online feature store (or MLBACKEND_REDIS_URL)"),
    ("redis-prefix", str, "prefix of the feature store's Redis keys"),
    ("online-read-cache", int, "feature store: online values kept in process (0 = off)"),
    ("maintenance-seconds", float, "feature store cleanup/catch-up interval (default 30)"),
    ("model-dir", Path, "serving: serve models from DIR/<model>/<version>/ (no registry)"),
    ("serving-models", str, "serving: versions to follow, e.g. fraud@production,x@latest:2"),
    ("serving-front", str, "serving: gRPC front, threads (default) or asyncio"),
    ("features-front", str, "features: gRPC front, threads (default) or asyncio"),
    ("http-port", int, "gateway: JSON/HTTP port (default 8080; 0 = ephemeral)"),
    ("timeouts", str, "gateway: per-dependency timeouts, e.g. features=0.5,serving=1 (seconds)"),
    ("max-in-flight", int, "gateway: predictions in progress before shedding (default 256)"),
    ("monitoring-nice", int, "monitoring: nice steps of its ingest thread (default 10; 0 = off)"),
    ("coalesce-rows", int, "gateway: most rows per coalesced upstream call (1 = off; 64)"),
    ("upstream-streams", int, "gateway: streams open to features and serving each (0 = off; 4)"),
    ("stream-slots", int, "features, serving: streams kept open per stream method (32)"),
)


# Shorter spellings the issues and docs use.
_ALIASES = {"database-url": ("--db",)}


def _add_server_flags(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    for flag, kind, help_text in _SERVER_FLAGS:
        if only is not None and flag not in only:
            continue
        names = (f"--{flag}", *_ALIASES.get(flag, ()))
        options: dict[str, Any] = {"dest": flag.replace("-", "_"), "default": None}
        if kind is None:
            options["action"] = "store_true"
        else:
            options["type"] = kind
        parser.add_argument(*names, help=help_text, **options)


def _settings_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Only the flags given: everything else comes from MLBACKEND_* or the defaults."""
    fields = (flag.replace("-", "_") for flag, _, _ in _SERVER_FLAGS)
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlbackend", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service in this process")
    serve.add_argument("service", choices=list(catalog.SERVICES))
    serve.add_argument(
        "--ready-file", type=Path, help="write the bound ports here as JSON once serving"
    )
    _add_server_flags(serve)

    shared = ("host", "data-dir", "token-file", "token", "log-format", "log-level", "grace-seconds")
    up = commands.add_parser("up", help="run all five services, each in its own process")
    up.add_argument(
        "--ephemeral-ports",
        action="store_true",
        help="let every service pick free ports instead of the defaults",
    )
    _add_server_flags(up, shared)

    models_cmd.add_parser(commands)
    features_cmd.add_parser(commands)
    predict_cmd.add_parser(commands)
    train_cmd.add_parser(commands)

    demo = commands.add_parser(
        "demo", help="train the fraud model, start the suite, score unseen transactions, stop"
    )
    _add_server_flags(demo, ("data-dir",))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "models":
        return models_cmd.run(args)
    if args.command == "features":
        return features_cmd.run(args)
    if args.command == "predict":
        return predict_cmd.run(args)
    if args.command == "train":
        return train_cmd.run(args)
    if args.command == "up":
        from mlbackend_cli import up

        return up.run_up(_settings_kwargs(args), ephemeral_ports=args.ephemeral_ports)
    from mlbackend_cli import demo

    return demo.run_demo(_settings_kwargs(args))


def _serve(args: argparse.Namespace) -> int:
    from mlbackend_runtime.logs import configure_logging
    from mlbackend_runtime.server import ConfigError, run_until_signalled
    from mlbackend_runtime.settings import ServerSettings

    try:
        settings = ServerSettings(**_settings_kwargs(args))
    except ValidationError as exc:
        print(f"mlbackend serve {args.service}: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(args.service, settings.log_format, settings.log_level)
    app = catalog.load(args.service)

    async def run() -> None:
        running = await app.create_server(settings)
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, args.service, running)
        # Start-up objects live for the whole process: keep them out of full collections.
        gc.freeze()
        await run_until_signalled(running)

    try:
        asyncio.run(run())
    except (ConfigError, OSError) as exc:
        print(f"mlbackend serve {args.service}: {exc}", file=sys.stderr)
        return 2
    return 0


def _write_ready_file(path: Path, service: str, running: RunningServer) -> None:
    info = {
        "service": service,
        "pid": os.getpid(),
        "address": running.address,
        "port": running.port,
        "metrics_port": running.metrics.port,
        "metrics_url": running.metrics.url,
        "health_port": running.health_port,
        **{f"{name}_port": port for name, port in running.extra_ports.items()},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)  # atomic: a reader never sees half a file
