"""Checks on the generated wire code under clients/mlbackend.

The committed code must equal a fresh run of scripts/gen_protos.py, and every
RPC of every mlbackend service must declare what the runtime relies on: the
`required_role` option (auth) and, for reads, idempotency_level
NO_SIDE_EFFECTS (the client retry policy).
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

import mlbackend
from mlbackend.common.v1 import options_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "clients"
GENERATOR = REPO_ROOT / "scripts" / "gen_protos.py"
READ_PREFIXES = ("Get", "List", "Count", "Watch", "Download")


def _tree(root: Path) -> dict[str, bytes]:
    """Map each file under root (relative posix path) to its bytes, skipping caches."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _generated_modules() -> list[ModuleType]:
    """Import every generated _pb2 and _pb2_grpc module of the mlbackend package."""
    modules: list[ModuleType] = []
    for info in pkgutil.walk_packages(mlbackend.__path__, prefix="mlbackend."):
        if info.name.endswith(("_pb2", "_pb2_grpc")):
            modules.append(importlib.import_module(info.name))
    return modules


def _mlbackend_services() -> list[ServiceDescriptor]:
    """Every service declared in a generated mlbackend.* proto package."""
    services: list[ServiceDescriptor] = []
    for module in _generated_modules():
        file_descriptor = getattr(module, "DESCRIPTOR", None)
        if not isinstance(file_descriptor, FileDescriptor):
            continue
        services.extend(
            service
            for service in file_descriptor.services_by_name.values()
            if service.full_name.startswith("mlbackend.")
        )
    return services


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    fresh = _tree(tmp_path / "mlbackend")
    committed = _tree(COMMITTED / "mlbackend")
    stale = sorted(
        path for path in fresh.keys() | committed.keys() if fresh.get(path) != committed.get(path)
    )
    assert not stale, (
        "generated code under clients/mlbackend is stale (run make proto): " + ", ".join(stale)
    )


def test_every_generated_module_imports() -> None:
    modules = _generated_modules()
    names = {m.__name__ for m in modules}
    assert "mlbackend.inference.v2.grpc_predict_v2_pb2_grpc" in names
    assert "mlbackend.registry.v1.registry_pb2_grpc" in names


def test_services_are_found() -> None:
    names = {s.full_name for s in _mlbackend_services()}
    assert names >= {
        "mlbackend.registry.v1.ModelRegistryService",
        "mlbackend.features.v1.FeatureStoreService",
        "mlbackend.serving.v1.ModelServingService",
        "mlbackend.gateway.v1.InferenceGatewayService",
        "mlbackend.monitoring.v1.MonitoringService",
    }


@pytest.mark.parametrize("service", _mlbackend_services(), ids=lambda s: s.full_name)
def test_every_method_declares_role_and_read_idempotency(service: ServiceDescriptor) -> None:
    problems = []
    for method in service.methods:
        options = method.GetOptions()
        role = options.Extensions[options_pb2.required_role]
        if role == options_pb2.ROLE_UNSPECIFIED:
            problems.append(f"{method.full_name}: no required_role")
        if (
            method.name.startswith(READ_PREFIXES)
            and options.idempotency_level != descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
        ):
            problems.append(f"{method.full_name}: read without NO_SIDE_EFFECTS")
    assert not problems, "\n".join(problems)
