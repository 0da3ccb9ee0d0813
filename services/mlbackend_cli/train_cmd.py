"""``mlbackend train``: train, register and promote a model through the suite.

::

    mlbackend train fraud [--registry ADDR] [--features ADDR] [--data-dir D] [--seed N]
                          [--users N] [--days N] [--estimator NAME --param k=v ...]
                          [--precision-target P] [--no-promote] [--json] [--token T]
    mlbackend train --config FILE [--registry ADDR] [--features ADDR] [--data-dir D]
                          [--no-promote] [--json] [--token T]

``--config`` trains a binary or multiclass classifier on any CSV/Parquet file described
by a YAML file (:mod:`mlbackend_training.config`, :mod:`mlbackend_training.tabular`); it is
exclusive with the ``fraud`` sub-command. For ``fraud``:

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
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from mlbackend_clients.channel import ChannelOptions
from mlbackend_clients.errors import RpcError
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_training.config import ConfigError, load_config
from mlbackend_training.fraud_data import FraudDataConfig
from mlbackend_training.pipeline import EstimatorSpec, TrainingConfig
from mlbackend_training.run_local import _param, format_summary
from mlbackend_training.tabular import DataError, TabularResult, format_result, train_from_config
from mlbackend_training.train_flow import MODEL, FlowResult, train_and_register

_Result = TypeVar("_Result", FlowResult, TabularResult)
DEFAULT_REGISTRY = "127.0.0.1:50052"
DEFAULT_FEATURES = "127.0.0.1:50051"


def add_parser(commands: Any) -> None:
    train = commands.add_parser(
        "train",
        help="train a model and register it through the suite",
        description="mlbackend train fraud [...] | mlbackend train --config FILE [...]",
    )
    # Options of the --config form; own dests, so the fraud sub-command's never mix in.
    train.add_argument("--config", dest="config_file", type=Path, metavar="FILE",
                       help="YAML file of a tabular problem (exclusive with 'fraud')")  # fmt: skip
    train.add_argument("--registry", dest="config_registry", default=DEFAULT_REGISTRY,
                       metavar="ADDR", help=f"registry (default {DEFAULT_REGISTRY})")  # fmt: skip
    train.add_argument("--features", dest="config_features", default=DEFAULT_FEATURES,
                       metavar="ADDR",
                       help="feature store, for a config naming a feature_service")  # fmt: skip
    train.add_argument("--data-dir", dest="config_data_dir", type=Path, default=Path("data"),
                       metavar="DIR", help="runs go under DIR/runs/<id>/")  # fmt: skip
    train.add_argument("--token", dest="config_token", default=None, metavar="TOKEN",
                       help="bearer token (or MLBACKEND_TOKEN)")  # fmt: skip
    train.add_argument("--no-promote", dest="config_no_promote", action="store_true",
                       help="register only; leave production where it is")  # fmt: skip
    train.add_argument("--json", dest="config_json", action="store_true",
                       help="print the evaluation as JSON")  # fmt: skip
    train.set_defaults(train_parser=train)
    problems = train.add_subparsers(dest="problem")
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
    if args.problem is not None and args.config_file is not None:
        print("mlbackend train: --config and 'fraud' are exclusive", file=sys.stderr)
        return 2
    if args.config_file is not None:
        return run_config(args)
    if args.problem is None:
        args.train_parser.print_usage(sys.stderr)
        print("mlbackend train: give 'fraud' or --config FILE", file=sys.stderr)
        return 2
    try:
        config = config_from(args)
    except ValueError as exc:
        print(f"mlbackend train: {exc}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("MLBACKEND_TOKEN")
    flow = train(
        config,
        args.data_dir,
        args.registry,
        args.features,
        token=token,
        model=args.model,
        promote=not args.no_promote,
        quiet=args.json,
    )
    return _run_and_print(flow, args.json, report)


def _run_and_print(
    flow: Coroutine[Any, Any, _Result], as_json: bool, text: Callable[[_Result], str]
) -> int:
    """Run a training flow; print its summary (JSON or text). Exit 2 on a data-file
    problem, 1 on another failure, 0 once the version is registered."""
    try:
        result = asyncio.run(flow)
    except DataError as exc:
        print(f"mlbackend train: {exc}", file=sys.stderr)
        return 2
    except (RpcError, ValueError) as exc:
        print(f"mlbackend train: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.summary, indent=2) if as_json else text(result))
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


def run_config(args: argparse.Namespace) -> int:
    """``mlbackend train --config FILE``: exit 2 on a bad config or data file, 1 on a
    service failure, 0 once the version is registered (promoted or not)."""
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        print(f"mlbackend train: {args.config_file}: {exc}", file=sys.stderr)
        return 2
    token = args.config_token or os.environ.get("MLBACKEND_TOKEN")
    options = ChannelOptions(token=token) if token else None
    quiet = args.config_json

    def say(text: str) -> None:
        if not quiet:
            print(f"  {text}", flush=True)

    async def go() -> TabularResult:
        registry = RegistryClient.connect(args.config_registry, options)
        features = (
            FeatureStoreClient.connect(args.config_features, options)
            if config.feature_service
            else None
        )
        try:
            return await train_from_config(
                config,
                args.config_data_dir,
                registry,
                features,
                promote=not args.config_no_promote,
                progress=not quiet,
                on_progress=say,
            )
        finally:
            await registry.close()
            if features is not None:
                await features.close()

    return _run_and_print(go(), quiet, format_result)
