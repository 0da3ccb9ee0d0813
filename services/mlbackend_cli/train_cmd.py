"""``mlbackend train fraud``: train, register and promote the fraud model through the suite.

::

    mlbackend train fraud [--registry ADDR] [--features ADDR] [--data-dir D] [--seed N]
                          [--users N] [--days N] [--estimator NAME --param k=v ...]
                          [--precision-target P] [--no-promote] [--json] [--token T]

Generates the seeded synthetic transactions, writes them into the feature store, reads
the training set back point-in-time, trains and evaluates against the baselines and the
current ``production`` version on the same test rows, registers the version (artifact,
metrics, signature, threshold, feature service, baseline statistics, lineage,
attachments) and moves ``production`` when the quality gate passes; otherwise the
reason is printed and recorded in the registry's audit log. Exit code 0 when the
version was registered (promoted or not), 1 on a failure, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.errors import RpcError
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_training.fraud_data import FraudDataConfig
from mlbackend_training.pipeline import EstimatorSpec, TrainingConfig
from mlbackend_training.run_local import _param, format_summary
from mlbackend_training.train_flow import MODEL, FlowResult, train_and_register

DEFAULT_REGISTRY = "127.0.0.1:50052"
DEFAULT_FEATURES = "127.0.0.1:50051"


def add_parser(commands: Any) -> None:
    train = commands.add_parser("train", help="train a model and register it through the suite")
    problems = train.add_subparsers(dest="problem", required=True)
    fraud = problems.add_parser(
        "fraud", help="the fraud case study: store → point-in-time → train → gate → register"
    )
    fraud.add_argument("--registry", default=DEFAULT_REGISTRY)
    fraud.add_argument("--features", default=DEFAULT_FEATURES)
    fraud.add_argument("--data-dir", type=Path, default=Path("data"))
    fraud.add_argument("--token", default=None, help="bearer token (or MLBACKEND_TOKEN)")
    fraud.add_argument("--model", default=MODEL)
    fraud.add_argument("--seed", type=int, default=FraudDataConfig.seed)
    fraud.add_argument("--users", type=int, default=FraudDataConfig.n_users)
    fraud.add_argument("--days", type=int, default=FraudDataConfig.n_days)
    fraud.add_argument("--estimator", default=EstimatorSpec.name)
    fraud.add_argument(
        "--param", type=_param, action="append", default=[], help="estimator KEY=VALUE (JSON)"
    )
    fraud.add_argument("--precision-target", type=float, default=TrainingConfig.precision_target)
    fraud.add_argument("--no-promote", action="store_true", help="register only")
    fraud.add_argument("--json", action="store_true", help="print the evaluation as JSON")


def config_from(args: argparse.Namespace) -> TrainingConfig:
    base = TrainingConfig()
    return replace(
        base,
        data=replace(base.data, seed=args.seed, n_users=args.users, n_days=args.days),
        estimator=EstimatorSpec(args.estimator, dict(args.param)),
        precision_target=args.precision_target,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"mlbackend train: {exc}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("MLBACKEND_TOKEN")
    try:
        result = asyncio.run(
            train(
                config,
                args.data_dir,
                args.registry,
                args.features,
                token=token,
                model=args.model,
                promote=not args.no_promote,
                quiet=args.json,
            )
        )
    except (RpcError, ValueError) as exc:
        print(f"mlbackend train: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        print(report(result))
    return 0


async def train(
    config: TrainingConfig,
    data_dir: Path,
    registry_address: str,
    features_address: str,
    *,
    token: str | None = None,
    model: str = MODEL,
    promote: bool = True,
    quiet: bool = False,
) -> FlowResult:
    """Connect to the registry and the feature store and run the flow once."""
    options = ChannelOptions(token=token) if token else None
    registry = RegistryClient.connect(registry_address, options)
    features = FeatureStoreClient.connect(features_address, options)

    def say(text: str) -> None:
        if not quiet:
            print(f"  {text}", flush=True)

    async with registry, features:
        return await train_and_register(
            config,
            data_dir,
            registry,
            features,
            model=model,
            promote=promote,
            progress=not quiet,
            on_progress=say,
        )


def report(result: FlowResult) -> str:
    lines = [format_summary(result.summary)]
    model = result.summary["registry"]["model"]
    lines.append(
        f"registered {model}@{result.version} with feature service {result.feature_service}"
    )
    lines.append(result.decision)
    return "\n".join(lines)
