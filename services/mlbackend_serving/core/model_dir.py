"""Simple mode: model versions from a local directory, without a registry.

Layout: ``DIR/<model>/<version>/model.json`` beside the artifact (``model.skops`` by
default). ``model.json`` holds the signature, output kind, classes, optional decision
threshold, the artifact's sha256 and an input example used to warm the model up.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlbackend_models.loader import DEFAULT_POLICY, ArtifactFormat, LoadPolicy, load_artifact
from mlbackend_runtime.errors import FieldViolation, InvalidInput, NotFound
from mlbackend_serving.core.batching import BatchingPolicy
from mlbackend_serving.core.model import (
    DType,
    FeatureSpec,
    LoadedModel,
    ModelKey,
    OutputKind,
    OutputSpec,
    Signature,
)

METADATA_FILE = "model.json"


class _Feature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: Literal["double", "int64", "bool"] = "double"
    nullable: bool = False


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["classifier", "regressor"]
    classes: list[int | str | bool | float] = Field(default_factory=list)
    decision_threshold: float | None = None


class _Batching(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(32, ge=1)
    max_wait_ms: float = Field(0.0, ge=0)
    max_queue: int = Field(1024, ge=1)


class ModelFile(BaseModel):
    """The schema of ``model.json``."""

    model_config = ConfigDict(extra="forbid")
    signature: list[_Feature] = Field(min_length=1)
    output: _Output
    sha256: str = Field(pattern="^[0-9a-fA-F]{64}$")
    format: Literal["skops", "pickle"] = "skops"
    artifact: str = "model.skops"
    input_example: list[list[float | int | bool | None]] = Field(default_factory=list)
    batching: _Batching | None = None
    aliases: list[str] = Field(default_factory=list)
    description: str = ""


class ModelDirectory:
    """Reads model versions from ``root``; loading verifies and validates the artifact."""

    def __init__(self, root: Path, policy: LoadPolicy = DEFAULT_POLICY) -> None:
        self.root = root
        self.policy = policy

    def versions(self) -> dict[str, list[int]]:
        """Every ``<model>/<version>`` holding a model.json, versions ascending."""
        found: dict[str, list[int]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            versions = sorted(
                int(v.name)
                for v in model_dir.iterdir()
                if v.name.isdigit() and (v / METADATA_FILE).is_file()
            )
            if versions:
                found[model_dir.name] = versions
        return found

    def describe(self, name: str, version: int) -> ModelFile:
        path = self._version_dir(name, version) / METADATA_FILE
        try:
            return ModelFile.model_validate(json.loads(path.read_text()))
        except (ValueError, ValidationError) as exc:
            errors = exc.errors() if isinstance(exc, ValidationError) else []
            violations = [
                FieldViolation(".".join(str(p) for p in e["loc"]), e["msg"]) for e in errors
            ] or [FieldViolation(METADATA_FILE, str(exc))]
            raise InvalidInput(f"{path}: invalid model metadata", violations) from None

    def load(self, name: str, version: int) -> tuple[LoadedModel, BatchingPolicy | None, list[str]]:
        """Verify, load and validate one version (blocking: run it off the event loop)."""
        meta = self.describe(name, version)
        artifact = self._version_dir(name, version) / meta.artifact
        if artifact.parent != self._version_dir(name, version) or not artifact.is_file():
            raise NotFound(f"{name}@{version}: artifact {meta.artifact!r} not found")
        estimator = load_artifact(
            artifact,
            expected_sha256=meta.sha256,
            artifact_format=ArtifactFormat(meta.format),
            policy=self.policy,
        )
        signature = Signature(
            tuple(FeatureSpec(f.name, DType(f.dtype), f.nullable) for f in meta.signature)
        )
        output = OutputSpec(
            OutputKind(meta.output.kind), tuple(meta.output.classes), meta.output.decision_threshold
        )
        example = np.asarray(meta.input_example, dtype=np.float64) if meta.input_example else None
        model = LoadedModel(
            ModelKey(name, version),
            signature,
            output,
            estimator,
            meta.sha256.lower(),
            example,
            {"description": meta.description},
        )
        batching = None
        if meta.batching is not None:
            b = meta.batching
            batching = BatchingPolicy(b.max_batch_size, b.max_wait_ms / 1000, b.max_queue)
        return model, batching, meta.aliases

    def _version_dir(self, name: str, version: int) -> Path:
        if not name or "/" in name or name.startswith(".") or name != Path(name).name:
            raise NotFound(f"model {name!r} not found")
        path = self.root / name / str(version)
        if not (path / METADATA_FILE).is_file():
            raise NotFound(f"model {name}@{version} not found in {self.root}")
        return path


def write_model_version(
    root: Path,
    name: str,
    version: int,
    estimator: Any,
    feature_names: list[str],
    *,
    input_example: list[list[float]],
    decision_threshold: float | None = None,
    batching: dict[str, Any] | None = None,
    nullable: Collection[str] = (),
) -> Path:
    """Save ``estimator`` with skops and its model.json (for tests, demos and tooling)."""
    import hashlib

    import skops.io as sio

    directory = root / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    data: bytes = sio.dumps(estimator)
    (directory / "model.skops").write_bytes(data)
    classifier = hasattr(estimator, "predict_proba")
    meta: dict[str, Any] = {
        "signature": [
            {"name": n, "dtype": "double", "nullable": n in nullable} for n in feature_names
        ],
        "output": {
            "kind": "classifier" if classifier else "regressor",
            "classes": np.asarray(estimator.classes_).tolist() if classifier else [],
            "decision_threshold": decision_threshold,
        },
        "sha256": hashlib.sha256(data).hexdigest(),
        "input_example": input_example,
    }
    if batching is not None:
        meta["batching"] = batching
    (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return directory
